"""The agent's parsers under hypothesis: garbage never crashes them, it is refused with a
clear error (ValueError naming the line) or parsed into what the schema can store."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from para.agent import config
from para.agent.jobs import (
    classify_path,
    cpulist_count,
    job_from_cgroup,
    parse_blkio,
    parse_environ,
    parse_io_stat,
    parse_limit,
    parse_proc_cgroup,
)
from para.agent.samplers.infiniband import parse_counter, parse_rate, parse_state
from para.agent.samplers.ipmi import parse_dcmi_power, parse_sdr_watts
from para.agent.samplers.licenses import parse_lmstat
from para.agent.samplers.lustre import parse_llite_stats
from para.agent.samplers.nfs import parse_mountstats
from para.agent.samplers.perfstat import SEP, parse_line

from .conftest import FIXTURES

INT64 = (1 << 63) - 1
SETTINGS = settings(max_examples=200, deadline=None)
PATH_PART = st.text(string.ascii_letters + string.digits + "_.-:@", min_size=1, max_size=20)


def refuses_cleanly(fn, data):  # type: ignore[no-untyped-def]
    """fn(data) either returns or raises ValueError (with a message); anything else fails."""
    try:
        return fn(data)
    except ValueError as e:
        assert str(e)
        return None


@SETTINGS
@given(st.binary(max_size=400))
def test_byte_parsers_never_crash(data):
    for fn in (
        parse_proc_cgroup,
        parse_io_stat,
        parse_blkio,
        parse_limit,
        parse_mountstats,
        parse_llite_stats,
    ):
        refuses_cleanly(fn, data)
    env = parse_environ(data)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    v = parse_counter(data)
    assert v is None or 0 <= v <= INT64
    parse_rate(data)
    parse_state(data)


@SETTINGS
@given(st.text(max_size=600))
def test_text_parsers_never_crash(text):
    st_ = parse_lmstat(text)
    for f in st_.features:
        assert f.in_use >= 0 and all(n > 0 for n in f.users.values())
    refuses_cleanly(parse_dcmi_power, text)
    assert all(isinstance(w, float) for _, w in parse_sdr_watts(text))
    refuses_cleanly(cpulist_count, text)
    for cg in (False, True):
        row = parse_line(text, SEP, cgroups=cg)
        assert row is None or row.event


cgroup_lines = st.lists(
    st.tuples(
        st.integers(0, 13),
        st.sampled_from(["", "memory", "cpu,cpuacct", "cpuset", "name=systemd", "pids"]),
        st.lists(
            st.one_of(
                PATH_PART,
                st.sampled_from(
                    [
                        "slurm",
                        "uid_20821",
                        "job_11",
                        "step_0",
                        "task_0",
                        "slurmstepd.scope",
                        "system.slice",
                        "torque",
                        "pbs_jobs.service",
                        "jobid",
                        "kubepods.slice",
                        "kubepods",
                        "lsf",
                        "job.12.0.1600000000",
                        "docker",
                    ]
                ),  # fmt: skip
            ),
            max_size=7,
        ),
    ),
    max_size=6,
)


@SETTINGS
@given(cgroup_lines)
def test_cgroup_membership_of_any_shape(lines):
    data = "".join(f"{h}:{c}:/{'/'.join(p)}\n" for h, c, p in lines).encode()
    parsed = parse_proc_cgroup(data)
    ref = job_from_cgroup(parsed)
    if ref is not None:
        assert ref.job_id and ref.cgroups
        for _, path in ref.cgroups:
            assert path.startswith("/")
    for _, path in parsed:
        hit = classify_path(path)
        assert hit is None or (hit[1] and path.startswith(hit[3]))


mountstats = st.lists(
    st.one_of(
        st.just("device srv:/export mounted on /mnt/x with fstype nfs4 statvers=1.1"),
        st.just("device /dev/sda1 mounted on / with fstype ext4"),
        st.from_regex(r"\t(bytes|events):(\t[0-9]{1,20}){0,30}", fullmatch=True),
        st.from_regex(r"\txprt:\t(tcp|udp|rdma)( [0-9]{1,12}){0,14}", fullmatch=True),
        st.just("\tper-op statistics"),
        st.from_regex(r"\t[A-Z]{2,10}:( [0-9]{1,20}){0,10}", fullmatch=True),
        st.text(max_size=30).filter(lambda s: "\n" not in s),
    ),
    max_size=20,
)


@SETTINGS
@given(mountstats)
def test_mountstats_of_any_shape(lines):
    mounts = refuses_cleanly(parse_mountstats, "\n".join(lines).encode()) or []
    for m in mounts:
        for v in [*m.bytes, *m.events, *m.xprt, *(x for op in m.ops.values() for x in op)]:
            assert v is None or 0 <= v <= INT64  # everything fits an int64 column


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.from_regex(
                r"[a-z_]{1,16} +[0-9]{1,20} samples \[[a-z]+\]( [0-9]{1,20}){0,4}", fullmatch=True
            ),  # fmt: skip
            st.just("snapshot_time             1308343279.169704 secs.usecs"),
            st.text(max_size=40).filter(lambda s: "\n" not in s),
        ),
        max_size=15,
    )
)
def test_llite_stats_of_any_shape(lines):
    stats = refuses_cleanly(parse_llite_stats, "\n".join(lines).encode()) or {}
    for count, total in stats.values():
        assert 0 <= count <= INT64 and (total is None or 0 <= total <= INT64)


REAL_LMSTAT = (FIXTURES / "lmstat/flexlm_exporter-lmstat_app1.txt").read_text().splitlines()


@SETTINGS
@given(st.lists(st.sampled_from(REAL_LMSTAT), max_size=60), st.randoms(use_true_random=False))
def test_lmstat_shuffled_real_lines(lines, rnd):
    """Real lmstat lines in any order and number: counts stay sane."""
    rnd.shuffle(lines)
    for f in parse_lmstat("\n".join(lines)).features:
        assert f.reserved >= 0 and f.queued >= 0 and f.in_use >= 0


@SETTINGS
@given(st.text(max_size=300))
def test_config_garbage_is_a_config_error(text):
    try:
        config.parse(text, "fuzz.toml")
    except config.ConfigError as e:
        assert e.problems and all(p.message for p in e.problems)
