"""The `para` command's entry point.

`para fold` is a filter that pipelines run on large inputs, where start-up counts: a plain
`para fold [options] [FILE]` runs without loading the command-line framework; everything
else (and `para fold --help`) goes to the command line in cli.py.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["fold"]:
        from para.analyzer import fold
        from para.errors import ParaError

        plain = fold.plain_args(argv[1:])
        if plain is not None:
            try:
                fold.run(plain.pop("file"), **plain)
            except ParaError as e:  # as cli.main prints it
                print(f"para: error: {e.message}", file=sys.stderr)
                if e.hint:
                    print(f"  hint: {e.hint}", file=sys.stderr)
                return e.exit_code
            except BrokenPipeError:
                return 0
            return 0
    from para.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
