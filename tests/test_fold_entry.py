"""`para fold` without the command-line framework (para/entry.py): a plain command line runs
straight to the kernel; it must print what the click command prints, byte for byte, and
leave everything else (help, mistakes) to click."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from para.analyzer.fold import fold_command, plain_args

from .conftest import FIXTURES, REPO

INPUT = FIXTURES / "perf-script" / "perf-script-cycles-cpp-stacks-std-function-inferno.txt"


def _para(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys; from para.entry import main; sys.argv[0] = 'para'; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin,
                          capture_output=True, env=env, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--pid"],
        ["--tid", "--kernel"],
        ["--all", "--addrs"],
        ["--event-filter", "cycles:uppp"],
        ["--event-filter=cycles:uppp"],
        ["--jobs", "2", "--pid"],
        ["-j", "1"],
        ["--jobs=3"],
    ],  # fmt: skip
)
def test_a_plain_command_line_prints_what_the_click_command_prints(args):
    assert plain_args([*args, str(INPUT)]) is not None
    fast = _para("fold", *args, str(INPUT))
    assert fast.returncode == 0, fast.stderr
    ref = CliRunner().invoke(fold_command, [*args, str(INPUT)])
    assert ref.exit_code == 0
    assert fast.stdout == ref.stdout_bytes and fast.stdout
    # standard input, named or not
    piped = _para("fold", *args, stdin=INPUT.read_bytes())
    assert piped.stdout == fast.stdout


def test_help_and_mistakes_go_to_click():
    assert plain_args(["--help"]) is None and plain_args(["--bogus", "f"]) is None
    assert plain_args(["a", "b"]) is None
    assert plain_args(["--jobs", "0", "f"]) is None and plain_args(["--jobs=x", "f"]) is None
    zero = _para("fold", "--jobs", "0", str(INPUT))
    assert zero.returncode == 2 and b"--jobs" in zero.stderr and not zero.stdout
    h = _para("fold", "--help")
    assert h.returncode == 0 and b"Usage: para fold" in h.stdout
    bad = _para("fold", "--bogus")
    assert bad.returncode == 2 and b"No such option" in bad.stderr and b"--bogus" in bad.stderr


def test_a_missing_file_is_said_as_the_cli_says_it(tmp_path):
    missing = tmp_path / "nope.perf"
    fast = _para("fold", str(missing))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    via_cli = subprocess.run([sys.executable, "-m", "para.cli", "fold", str(missing)],
                             capture_output=True, env=env, timeout=60)  # fmt: skip
    assert fast.returncode == via_cli.returncode == 1
    assert fast.stderr == via_cli.stderr and b"no such file" in fast.stderr
