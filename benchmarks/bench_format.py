"""Bytes per stored value: para against sysstat's sadc over the same interval.

Records this machine for --seconds (default 600: the 10-minute figure of docs/benchmarks.md)
at 1 Hz with both `para profile -- sleep N` and `sadc -S XALL 1`, side by side, then prints
file size, values and bytes per value of each.  para's values are those its file declares
(`para show --json`: non-null cells of every series); sadc's are the numbers `sadf -j -A`
reports for each of its samples (sadc stores one raw counter per reported rate).

    .venv/bin/python benchmarks/bench_format.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def find_sadc() -> str:
    for p in ("/usr/lib/sysstat/sadc", "/usr/lib64/sa/sadc", "/usr/libexec/sysstat/sadc"):
        if os.access(p, os.X_OK):
            return p
    sys.exit("sadc not found: install sysstat (Debian: apt install sysstat)")


def count_numbers(obj: object) -> int:
    if isinstance(obj, bool):
        return 0
    if isinstance(obj, int | float):
        return 1
    if isinstance(obj, dict):
        return sum(count_numbers(v) for k, v in obj.items() if k != "timestamp")
    if isinstance(obj, list):
        return sum(count_numbers(v) for v in obj)
    return 0


def sadc_values(path: Path) -> tuple[int, int]:
    out = subprocess.run(
        ["sadf", "-j", str(path), "--", "-A"], capture_output=True, text=True, check=True
    ).stdout
    stats = json.loads(out)["sysstat"]["hosts"][0]["statistics"]
    # the first record is sadc's baseline: stored, but sadf reports rates from the second on
    per_sample = [count_numbers(s) for s in stats]
    return len(stats) + 1, sum(per_sample) + (per_sample[0] if per_sample else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--keep", metavar="DIR", help="keep both files in DIR")
    args = ap.parse_args()
    if not shutil.which("sadf"):
        sys.exit("sadf not found: install sysstat")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-format-"))
    work.mkdir(parents=True, exist_ok=True)
    para_file, sa_file = work / "bench.para", work / "bench.sa"
    sa_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    print(f"recording {args.seconds} s at 1 Hz with para and sadc -S XALL ...", flush=True)
    sadc = subprocess.Popen([find_sadc(), "-S", "XALL", "1", str(args.seconds + 1), str(sa_file)])
    para = subprocess.run(
        [sys.executable, "-m", "para", "profile", "-q", "-i", "1", "-o", str(para_file), "--",
         "sleep", str(args.seconds)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    sadc.wait()
    if para.returncode != 0:
        sys.exit(f"para profile failed: {para.stderr}")
    show = json.loads(
        subprocess.run(
            [sys.executable, "-m", "para", "show", "--json", str(para_file)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    p_bytes, p_values, p_samples = show["bytes"], show["values"], show["samples"]
    s_bytes = sa_file.stat().st_size
    s_samples, s_values = sadc_values(sa_file)
    p_bpv, s_bpv = p_bytes / p_values, s_bytes / s_values
    print(f"\n{'tool':<22}{'samples':>9}{'values':>12}{'bytes':>12}{'bytes/value':>13}")
    print(f"{'para (.para v1)':<22}{p_samples:>9}{p_values:>12,}{p_bytes:>12,}{p_bpv:>13.3f}")
    print(f"{'sadc -S XALL':<22}{s_samples:>9}{s_values:>12,}{s_bytes:>12,}{s_bpv:>13.3f}")
    print(
        f"\npara stores a value in {p_bpv / s_bpv:.3f}x the bytes sadc needs "
        f"({s_bpv / p_bpv:.1f}x smaller); goal: at most 0.5 bytes/value"
    )
    print(f"values per sample: para {p_values / p_samples:.0f}, sadc {s_values / s_samples:.0f}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
