# The API shared by the _procread kernel and its twin procread_py.
ProcRow = tuple[
    int,
    str,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    int,
    int | None,
    int | None,
    int | None,
    int | None,
    int | None,
    int | None,
    int,
    int,
    int,
    str,
]

def read_pids(fds: list[tuple[int, int, int]], page_size: int) -> list[ProcRow | None]: ...
