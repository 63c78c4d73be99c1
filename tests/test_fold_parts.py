"""`para fold` on several processes (para/analyzer/fold_parts.py): the parts, folded apart
and added, must give what the whole input folds to, quirks of the reference included."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from para.analyzer import fold_parts
from para.cython_ext import load

from .conftest import FIXTURES, REPO, compiled_kernel
from .test_fold import OPTIONS, REFERENCE, option_sets, perf_texts, reference

SUITE = FIXTURES / "flamegraph"


def suite_text() -> bytes:
    """The suite's 13 real inputs one after the other, their events as recorded (cycles,
    cpu-clock, page faults ...): only the first is kept unless a filter is given."""
    parts = []
    for path in sorted(SUITE.glob("*.txt")):
        text = path.read_bytes()
        parts.append(text if text.endswith(b"\n\n") else text.rstrip(b"\n") + b"\n\n")
    return b"".join(parts)


@pytest.fixture(params=[False, True], ids=["cython", "python"])
def fk(request):
    return load("fold", pure=True) if request.param else compiled_kernel("fold")


@pytest.fixture
def tiny_parts(monkeypatch):
    """Parts of any size, so that small inputs are cut too."""
    monkeypatch.setattr(fold_parts, "MIN_PART_BYTES", 1)


@pytest.mark.parametrize("jobs", [2, 3, 8])
@pytest.mark.parametrize("event", [None, "instructions", "cpu-clock", "cycles", "page-faults"])
def test_the_suite_folded_in_parts_is_the_suite_folded_whole(fk, tiny_parts, jobs, event):
    text = suite_text()
    assert len(fold_parts.cut(text, jobs)) == jobs
    whole = fk.fold(text, event_filter=event)
    assert whole  # each of these events has samples in the suite
    assert fold_parts.fold(text, jobs, impl=fk, event_filter=event) == whole
    for options in OPTIONS.values():
        assert fold_parts.fold(text, jobs, impl=fk, **options) == fk.fold(text, **options)


def test_every_part_but_the_first_starts_after_a_blank_line():
    text = suite_text()
    for parts in range(2, 40):
        spans = fold_parts.cut(text, parts)
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start == end and text[start - 2 : start] == b"\n\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=perf_texts, options=option_sets, filtered=st.booleans(), jobs=st.integers(2, 5))
def test_generated_text_folded_in_parts(fk, tiny_parts, data, options, filtered, jobs):
    """Headers without a blank line before them, filtered events that leave a header in
    force, samples without frames, a last sample without a blank line: the parts agree."""
    event = "cycles" if filtered else None
    expected = fk.fold(data, event_filter=event, **options)
    assert fold_parts.fold(data, jobs, impl=fk, event_filter=event, **options) == expected


def test_the_parts_are_folded_by_other_processes(fk, tiny_parts):
    """The kernel's own accounting: CPU time of reaped children grows by the parts' folding."""
    text = suite_text() * 8
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert fold_parts.fold(text, 2, impl=fk) == fk.fold(text)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert after.ru_utime + after.ru_stime > before.ru_utime + before.ru_stime


def test_a_part_whose_process_fails_is_folded_here(fk, tiny_parts, monkeypatch, capfd):
    parent = os.getpid()
    real = fold_parts._fold_span

    def crash_in_children(kernel, view, span, options):
        if os.getpid() != parent:
            os._exit(3)
        return real(kernel, view, span, options)

    monkeypatch.setattr(fold_parts, "_fold_span", crash_in_children)
    text = suite_text()
    assert fold_parts.fold(text, 3, impl=fk) == fk.fold(text)
    assert capfd.readouterr().err.count("a helper process failed") == 2


def test_no_process_to_spare_folds_the_rest_here(fk, tiny_parts, monkeypatch, capfd):
    """Past ulimit -u (fork says EAGAIN) the parts not started are folded by para itself."""
    forks = []
    real_fork = os.fork

    def fork_once():
        if forks:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_once)
    text = suite_text()
    fds = len(os.listdir("/proc/self/fd"))
    assert fold_parts.fold(text, 4, impl=fk) == fk.fold(text)
    assert len(forks) == 1 and len(os.listdir("/proc/self/fd")) == fds
    assert (
        "cannot start a helper process (Resource temporarily unavailable)" in capfd.readouterr().err
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=perf_texts)
def test_the_first_event_is_the_filter_the_fold_takes(data):
    """Both implementations name the same event, and folding with it given changes nothing."""
    cy, py = compiled_kernel("fold"), load("fold", pure=True)
    event = cy.first_event(data)
    assert py.first_event(data) == event
    assert cy.fold(data, event_filter=event) == cy.fold(data)
    assert py.fold(data, event_filter=event) == py.fold(data)


def test_the_first_event_of_real_inputs(fk):
    """The suite's first input samples two events (cycles and instructions); a header without
    an event before the others leaves the choice to the next one."""
    text = suite_text()
    assert fk.first_event(text) == "instructions"
    assert fk.first_event(b"x 1 2.0:\n  1 f (d)\n\n" + text) == "instructions"
    assert fk.first_event(b"# x 1 2.0: 5 cycles:\n\n") is None
    assert fk.first_event(b"") is None


def test_the_command_on_several_processes_prints_what_the_reference_prints(tmp_path):
    """A file above the size where parts pay, folded by `para fold --jobs 2` and by
    stackcollapse-perf.pl: the same bytes."""
    text = suite_text()
    copies = fold_parts.MIN_PART_BYTES * 2 // len(text) + 1
    path = tmp_path / "big.perf"
    path.write_bytes(text * copies)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys; from para.entry import main; sys.argv[0] = 'para'; sys.exit(main())"
    outs = {}
    for jobs in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code, "fold", "--jobs", jobs, str(path)],
                              capture_output=True, env=env, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        outs[jobs] = done.stdout
    assert outs["2"] == outs["1"] == reference(path, [])
    assert REFERENCE.is_file()
