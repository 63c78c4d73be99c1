"""The `para` command: wires subcommands to the parts that do the work.

Imports are made inside the commands so that `para profile` starts without loading the
analyzer's libraries.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from para import __version__
from para.errors import ParaError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Commands whose code lives in a part: loaded when used, so that one part's imports (or a
# part still being built) never slow down or break the others.
LAZY_COMMANDS = {
    "fold": "para.analyzer.fold:fold_command",
    "agent": "para.agent.commands:agent_group",
    "collector": "para.collector.commands:collector_group",
    "collect": "para.collector.commands:collect_command",
    "query": "para.collector.commands:query_command",
    "compare": "para.analyzer.commands:compare_command",
    "jobs": "para.analyzer.commands:jobs_command",
    "top": "para.analyzer.top:top_command",
    "web": "para.web.commands:web_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._available()))

    def _available(self) -> dict[str, str]:
        import importlib.util

        out = {}
        for name, target in LAZY_COMMANDS.items():
            module = target.split(":")[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if found:
                out[name] = target
        return out

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in self._available():
            return cmd
        import importlib

        module, attr = LAZY_COMMANDS[name].split(":")
        loaded: click.Command = getattr(importlib.import_module(module), attr)
        return loaded


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="para")
def cli() -> None:
    """para: per-second performance monitor and analyzer for HPC and AI clusters.

    \b
    Profile a program:      para profile -- ./app args
    Look inside a file:     para show run.para
    Read the analysis:      para report run.para --html run.html
    """


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Where to write (default para-<cmd>-<host>-<time>.para). "
    "Placeholders: {cmd} {host} {job} {rank} {time} {pid}.",
)
@click.option(
    "-i",
    "--interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between samples (0.05 at the shortest).",
)
@click.option(
    "--functions",
    is_flag=True,
    help="Also sample call stacks with perf record (cycles, else cpu-clock); Python "
    "processes get their Python functions from py-spy.",
)
@click.option(
    "--no-python-stacks",
    is_flag=True,
    help="With --functions: no py-spy; Python processes keep perf's interpreter frames.",
)
@click.option(
    "--py-spy-rate",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    metavar="HZ",
    help="With --functions: how often py-spy reads the Python stacks (it places perf's "
    "samples in time; perf's rate sets the samples).",
)
@click.option(
    "--call-graph",
    type=click.Choice(["auto", "fp", "dwarf", "lbr"]),
    default="auto",
    show_default=True,
    help="How --functions unwinds call stacks: frame pointers, dwarf (callers through "
    "libraries built without frame pointers, e.g. MPI; costs more), LBR (CPUs that have it); "
    "auto chooses per command.",
)
@click.option(
    "-e",
    "--event",
    "events",
    multiple=True,
    metavar="EVENT",
    help="Extra perf event to count (repeatable), e.g. -e L1-dcache-load-misses.",
)
@click.option("--no-counters", is_flag=True, help="Do not run perf stat.")
@click.option("--no-gpu", is_flag=True, help="Do not sample GPUs.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and the summary.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def profile(
    output: str | None,
    interval: float,
    functions: bool,
    call_graph: str,
    no_python_stacks: bool,
    py_spy_rate: int,
    events: tuple[str, ...],
    no_counters: bool,
    no_gpu: bool,
    quiet: bool,
    cmd: tuple[str, ...],
) -> None:
    """Run CMD and record what it and the node do, every INTERVAL seconds.

    Exits with CMD's exit code.  Ctrl-C or SIGTERM are passed on to CMD and the file is
    still written.
    """
    from para.agent.child import block_forwarded

    block_forwarded()  # before the imports below start threads
    from para.agent.profile import ProfileOptions, run
    from para.analyzer.summary import print_profile_summary

    opts = ProfileOptions(
        list(cmd),
        output,
        interval,
        functions,
        list(events),
        counters=not no_counters,
        gpu=not no_gpu,
        quiet=quiet,
        call_graph=call_graph,
        python_stacks=not no_python_stacks,
        pyspy_rate=py_spy_rate,
    )
    result = run(opts)
    if result.path is not None:
        print_profile_summary(result.path, sys.stderr)
    raise SystemExit(result.exit_code)


@cli.command(context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-catalogue", is_flag=True, help="Leave out the metric catalogue.")
def show(file: str, as_json: bool, no_catalogue: bool) -> None:
    """What a .para file holds: host, job, time range, sample counts, metric catalogue."""
    from para.formats.show import show as run_show

    raise SystemExit(run_show(file, as_json, sys.stdout, catalogue=not no_catalogue))


@cli.command(context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="FILE", help="Write the complete file here instead.")
def recover(file: str, output: str | None) -> None:
    """Rewrite a .para file whose writer was killed as a complete file."""
    from para.formats.reader import ParaFile

    with ParaFile(file) as pf:
        if pf.recovery:
            click.echo(f"para: {pf.recovery.message}", err=True)
        fin = pf.recover(output)
    click.echo(
        f"Wrote {fin.path} ({fin.samples} samples, {fin.values:,} values, {fin.bytes:,} bytes)",
        err=True,
    )
    click.echo(f"Next: para report {fin.path}", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=False, type=click.Path(dir_okay=False))
@click.option(
    "--job",
    metavar="ID",
    help="With FILES (an agent's segments): that job only (without it, every job in turn). "
    "Without FILES: a job of the feature database.",
)
@click.option(
    "--db",
    metavar="DIR",
    envvar="PARA_DB",
    default="para-db",
    show_default=True,
    help="The feature database, for --job ($PARA_DB).",
)
@click.option(
    "--rules",
    metavar="FILE",
    envvar="PARA_RULES",
    help="Bottleneck thresholds to use instead of the defaults (rules.toml).",
)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (docs/report-json.md).")
@click.option("--html", "html_out", metavar="OUT", help="Write a self-contained HTML report.")
@click.option(
    "--runs/--no-runs",
    default=None,
    help="Each file's own report in `runs` too (default: for up to 8 files in JSON and HTML, "
    "4 in the terminal).",
)
def report(
    files: tuple[str, ...],
    job: str | None,
    db: str,
    rules: str | None,
    as_json: bool,
    html_out: str | None,
    runs: bool | None,
) -> None:
    """What limits the job and where the time went, for FILES or a job of the database:
    in the terminal, as JSON, or as one HTML page."""
    from para.analyzer.report import main as report_main

    raise SystemExit(
        report_main(
            list(files),
            as_json=as_json,
            html_out=html_out,
            job=job,
            db=db if job else None,
            rules=rules,
            runs=runs,
        )
    )


def bottleneck_judge() -> Any:
    """The analyzer's bottleneck rules for the collector's alert rules: the collector sits
    upstream of the analyzer, so they are handed to it here."""
    from para.analyzer.window import Judge

    return Judge()


def web_beside_collector(listen: str, config_file: str | None) -> Any:
    """`para collector serve --web`: the portal, started by the collector with its own
    service (live data, certificate, database), which the collector does not import."""

    def start(service: Any) -> Any:
        from para.web.commands import start_beside_collector

        return start_beside_collector(listen, config_file, service.opts, service.alerts.summary)

    return start


# what one part lends another against the flow of data (read by the commands that use it)
PARTS = {"bottleneck_judge": bottleneck_judge, "web_beside_collector": web_beside_collector}


def main(argv: list[str] | None = None) -> int:
    """Run para; returns the exit code (tests call this directly)."""
    try:
        cli.main(args=argv, prog_name="para", standalone_mode=False, obj=PARTS)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except ParaError as e:
        click.echo(f"para: error: {e.message}", err=True)
        if e.hint:
            click.echo(f"  hint: {e.hint}", err=True)
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("para: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
