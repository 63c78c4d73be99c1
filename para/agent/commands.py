"""`para agent run | status | check-config`: the node agent's commands (docs/agent.md).

Nothing heavy is imported here: `para agent run` must start without pyarrow (see lean.py).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click

from para.errors import ParaError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
CONFIG_HELP = "Configuration file (default /etc/para/agent.toml if it exists, else the defaults)."
# `para agent status` exit codes, as LSB init scripts' status: 0 running, 3 not running
EXIT_RUNNING, EXIT_STOPPED, EXIT_UNKNOWN = 0, 3, 4


@click.group("agent", context_settings=CONTEXT)
def agent_group() -> None:
    """The node agent: per-second, per-job records of everything a node does.

    \b
    Run it (systemd runs this):   para agent run --config /etc/para/agent.toml
    Check a configuration:        para agent check-config /etc/para/agent.toml
    See what it does:             para agent status
    """


@agent_group.command("run", context_settings=CONTEXT)
@click.option("-c", "--config", "config_path", metavar="FILE", help=CONFIG_HELP)
def run_command(config_path: str | None) -> None:
    """Sample this node into the spool until SIGTERM (SIGHUP reloads the configuration).

    Runs in the foreground and logs to stderr (the journal, under systemd).
    """
    from para.agent.daemon import main

    raise SystemExit(main(config_path))


@agent_group.command("check-config", context_settings=CONTEXT)
@click.argument("file", required=False, metavar="[FILE]")
@click.option("-c", "--config", "config_path", metavar="FILE", help="Same as FILE.")
def check_config_command(file: str | None, config_path: str | None) -> None:
    """Validate a configuration: every bad key with its line, and what would run."""
    from para.agent import config as cfgmod

    path = file or config_path
    if path is None:
        path = str(cfgmod.DEFAULT_PATH)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ParaError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        cfg = cfgmod.parse(text, path)
    except cfgmod.ConfigError as e:
        for p in e.problems:
            click.echo(p.format(path), err=True)
        click.echo(
            f"{path}: {len(e.problems)} problem{'s' if len(e.problems) != 1 else ''}; every key "
            "and its default: docs/agent.md",
            err=True,
        )
        raise SystemExit(1) from None
    shipper_problems = _collector_problems(cfg, text, path) + _live_problems(cfg, text, path)
    if shipper_problems:
        for line in shipper_problems:
            click.echo(line, err=True)
        raise SystemExit(1)
    click.echo(f"{path}: OK")
    for line in describe(cfg):
        click.echo(f"  {line}")


def _collector_problems(cfg: Any, text: str, path: str) -> list[str]:
    if cfg.collector is None:
        return []
    from para.agent.config import key_lines

    try:
        from para.agent.shipper import validate_config
    except ImportError as e:
        return [f"{path}: [collector] is configured but this para cannot ship ({e})"]
    lines = key_lines(text)
    out = []
    for problem in validate_config(cfg.collector):
        m = re.match(r"collector\.(\w+)", problem)
        line = lines.get(("collector", m.group(1))) if m else None
        line = line or lines.get(("collector", ""))
        out.append(f"{path}:{line}: [collector] {problem}" if line else f"{path}: {problem}")
    return out


def _live_problems(cfg: Any, text: str, path: str) -> list[str]:
    """Problems of the [alerts] and [metrics] tables (para/agent/livenode.py, docs/alerts.md)."""
    if not cfg.live:
        return []
    from para.agent.config import key_lines
    from para.agent.livenode import validate

    lines = key_lines(text)
    out = []
    for table, body in cfg.live.items():
        for problem in validate(table, body):
            m = re.match(rf"{table}\.(\w+)", problem)
            line = (lines.get((table, m.group(1))) if m else None) or lines.get((table, ""))
            out.append(f"{path}:{line}: [{table}] {problem}" if line else f"{path}: {problem}")
    return out


def describe(cfg: Any) -> list[str]:
    """What this configuration runs, in a few lines."""
    from para.agent.config import FAMILIES

    a = cfg["agent"]
    fams = [f for f in FAMILIES if cfg.enabled(f)]
    off = [f for f in FAMILIES if not cfg.enabled(f)]
    seg = cfg["segments"]
    ret = cfg["retention"]
    lines = [
        f"every {a['interval']:g} s into {a['spool_dir']} as host {cfg.host}",
        "families: " + ", ".join(fams) + (f" (off: {', '.join(off)})" if off else ""),
        f"segments: {seg['max_seconds']:g} s or {_size(seg['max_bytes'])} each; "
        f"{seg['buffer_samples']} samples kept in memory while the spool cannot be written",
        f"retention: {_size(ret['max_bytes'])}, {ret['max_age_hours']:g} h, "
        f"{_size(ret['min_free_bytes'])} left free",
        f"jobs: per-process rows for {cfg['jobs']['processes']!r} processes, "
        f"environment fallback {'on' if cfg['jobs']['environ'] else 'off'}",
        "collector: " + ("configured" if cfg.collector is not None else "none (segments stay)"),
    ]
    if "alerts" in cfg.live:
        lines.append(f"alerts: rules {cfg.live['alerts'].get('rules')}, notified from this node "
                     "when the collector is unreachable")  # fmt: skip
    if "metrics" in cfg.live and cfg.live["metrics"].get("enabled", True):
        lines.append(f"metrics: /metrics on {cfg.live['metrics'].get('listen', '127.0.0.1:9466')}")
    changed = sorted(cfg.explicit)
    if changed:
        lines.append("set by the file: " + ", ".join(changed))
    return lines


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@agent_group.command("status", context_settings=CONTEXT)
@click.option("-c", "--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--spool", metavar="DIR", help="Spool directory (default: from the configuration).")
@click.option("--json", "as_json", is_flag=True, help="The status as JSON (status.json, checked).")
def status_command(config_path: str | None, spool: str | None, as_json: bool) -> None:
    """What the agent on this node does: state, last sample, families, jobs, spool."""
    from para.agent import config as cfgmod
    from para.agent.spool import Spool

    spool_dir = cfgmod.load(config_path).spool_dir if spool is None else Path(spool)
    sp = Spool(spool_dir)
    doc = sp.read_status()
    if doc is None:
        msg = f"no agent status in {sp.status_path}: the agent has not run with this spool"
        if as_json:
            click.echo(json.dumps({"state": "unknown", "error": msg}))
        else:
            click.echo(f"para agent: {msg}", err=True)
        raise SystemExit(EXIT_UNKNOWN)
    live = _alive(doc)
    doc["running"] = live
    doc["spool_now"] = sp.usage()
    if as_json:
        click.echo(json.dumps(doc, indent=1, default=str))
    else:
        click.echo("\n".join(render_status(doc)))
    raise SystemExit(EXIT_RUNNING if live else EXIT_STOPPED)


def _alive(doc: dict[str, Any]) -> bool:
    pid = doc.get("pid")
    if doc.get("state") != "running" or not isinstance(pid, int):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"para" in cmdline and b"agent" in cmdline


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    d = time.time() - t
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return f"{when} ({_span(d)} ago)"


def _span(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s // 3600:.0f} h {s % 3600 / 60:.0f} min"
    return f"{s // 86400:.0f} d {s % 86400 / 3600:.0f} h"


def render_status(doc: dict[str, Any]) -> list[str]:
    live = doc.get("running")
    state = "running" if live else "NOT running"
    if not live:
        if doc.get("state") == "stopped":
            state += " (stopped cleanly)"
        else:
            state += " (it did not stop cleanly: killed or crashed; its last segment is " \
                "finalised at the next start)"  # fmt: skip
    lines = [
        f"para agent on {doc.get('host')}: {state}; pid {doc.get('pid')}, "
        f"started {_ago(doc.get('started'))}",
        f"  config        {doc.get('config') or '(defaults)'}; para {doc.get('para_version')}, "
        f"kernels {doc.get('kernels')}",
        f"  last sample   {_ago(doc.get('last_sample'))}; every {doc.get('interval')} s, "
        f"{doc.get('samples', 0):,} samples, {doc.get('missed_ticks', 0)} missed ticks, "
        f"{doc.get('clock_steps', 0)} clock steps",
    ]
    seg = doc.get("segment")
    if seg:
        lines.append(
            f"  segment       {Path(seg['path']).name}: {seg['samples']:,} samples, "
            f"{_size(seg['bytes'])} of journal"
        )
    segs = doc.get("segments") or {}
    lines.append(
        f"  segments      {segs.get('finalized', 0)} finalised, {segs.get('finalizing', 0)} "
        f"being finalised, {len(segs.get('failed') or {})} failing"
    )
    sp = doc.get("spool_now") or doc.get("spool") or {}
    parts = []
    for d in ("current", "ready", "sent"):
        x = sp.get(d) or {}
        parts.append(f"{d} {x.get('segments', 0)} ({_size(x.get('bytes', 0))})")
    free = sp.get("fs_free_bytes")
    lines.append(
        f"  spool         {sp.get('dir')}: {_size(sp.get('bytes', 0))} in "
        + ", ".join(parts)
        + (f"; {_size(free)} free" if free is not None else "")
    )
    losses = doc.get("losses") or {}
    spool_doc = doc.get("spool") or {}
    lost = []
    if losses.get("lost_samples"):
        lost.append(f"{losses['lost_samples']} samples lost ({losses.get('last_error')})")
    if losses.get("buffered_samples"):
        lost.append(
            f"{losses['buffered_samples']} samples waiting in memory: the spool cannot be "
            f"written since {_ago(losses.get('spool_unwritable_since'))}"
        )
    if spool_doc.get("dropped_unshipped_segments"):
        lost.append(
            f"{spool_doc['dropped_unshipped_segments']} unshipped segments dropped by retention"
        )
    lines.append("  losses        " + ("; ".join(lost) if lost else "none"))
    lines.append("  families")
    for fam, st in (doc.get("families") or {}).items():
        reason = st.get("reason", "")
        extra = []
        if st.get("errors"):
            extra.append(f"{st['errors']} errors")
        if st.get("late"):
            extra.append(f"{st['late']} late")
        note = (reason + (" " if reason and extra else "") + ", ".join(extra)).strip()
        lines.append(f"    {fam:<12} {st.get('state', '?'):<12} {note}".rstrip())
    jobs = doc.get("jobs")
    if jobs is not None:
        if jobs:
            desc = ", ".join(
                f"{j['job']} ({j['scheduler']}"
                + (f", {j['user']}" if j.get("user") else "")
                + (f", {j['job_name']}" if j.get("job_name") else "")
                + f", {j['processes']} processes)"
                for j in jobs
            )
            lines.append(f"  jobs          {len(jobs)} running: {desc}")
        else:
            lines.append("  jobs          none running")
    stk = doc.get("stacks")
    if stk:
        line = (
            f"  stacks        {stk.get('state')}: {stk.get('windows', 0)} windows, "
            f"{stk.get('samples', 0)} job samples, {stk.get('restarts', 0)} restarts"
        )
        if stk.get("state") == "restarting" and stk.get("retry_at"):
            line += f" (next try in {_span(max(0.0, stk['retry_at'] - time.time()))})"
        if stk.get("filter"):
            line += f"; recording {stk['filter']}"
        if stk.get("last_error"):
            line += f"; last error: {stk['last_error']}"
        lines.append(line)
    sh = doc.get("shipper")
    if sh:
        lines.append(
            f"  shipper       {sh.get('state')}: {sh.get('waiting_segments', 0)} waiting, "
            f"{sh.get('sent', 0)} sent"
            + (f"; last error: {sh['last_error']}" if sh.get("last_error") else "")
        )
        snd = sh.get("sender")
        if snd:  # the Flight client's processes (para/agent/sender.py)
            lines.append(
                f"  sender        {len(snd.get('pids') or [])} running, {snd.get('started', 0)} "
                f"started, {snd.get('died', 0)} died; {snd.get('cpu_s', 0)} s CPU, peak "
                f"{_size(snd.get('max_rss_bytes', 0))} each"
            )
    else:
        lines.append("  shipper       none configured (segments stay in ready/)")
    live = doc.get("live")
    if live:
        act = live.get("active") or []
        lines.append(
            f"  alerts        {live.get('rules', 0)} rules, {len(act)} firing"
            + (": " + "; ".join(a["summary"] for a in act[:3]) if act else "")
            + ("; notifying from this node (collector unreachable)" if live.get("notifying")
               else "")
            + (f"; /metrics on {live['metrics']}" if live.get("metrics") else "")
        )  # fmt: skip
    res = doc.get("resources") or {}
    fin_rss = _size(segs.get("finalizer_max_rss_bytes", 0))
    lines.append(
        f"  resources     {res.get('cpu_s', 0)} s CPU, {_size(res.get('rss_bytes', 0))} resident "
        f"(peak {_size(res.get('max_rss_bytes', 0))}); finaliser "
        f"{segs.get('finalizer_cpu_s', 0)} s CPU, peak {fin_rss}"
    )
    return lines
