"""The analyzer's commands that para/cli.py loads lazily: `para compare` and `para jobs`.
(`para report` lives in cli.py and calls report.main.)"""

from __future__ import annotations

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DB_HELP = "The feature database directory (default $PARA_DB, else ./para-db)."
RULES_HELP = "TOML file overriding rule thresholds (see para/analyzer/rules.toml; or $PARA_RULES)."


@click.command("compare", context_settings=CONTEXT)
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--db", metavar="DIR", help="Take A and B as job ids of this feature database.")
@click.option("--rules", metavar="FILE", help=RULES_HELP)
def compare_command(a: str, b: str, as_json: bool, db: str | None, rules: str | None) -> None:
    """What changed between two runs of the same application: time per phase, resources,
    hotspots, bottlenecks.

    A and B are .para files, directories holding a job's .para files, or (with --db) job
    ids of the feature database.
    """
    from para.analyzer.compare import main

    raise SystemExit(main(a, b, as_json=as_json, db=db, rules=rules))


@click.command("jobs", context_settings=CONTEXT)
@click.option("--db", metavar="DIR", help=DB_HELP)
@click.option("--user", help="Only this user's jobs.")
@click.option("--name", help="Only jobs whose name matches (* is a wildcard).")
@click.option("--since", metavar="TIME", help="Started at or after (e.g. 2026-11-01).")
@click.option("--until", metavar="TIME", help="Started before.")
@click.option("--min-nodes", type=int, help="At least this many nodes.")
@click.option("--bottleneck", metavar="ID", help="Only jobs where this rule fired.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@click.option(
    "--analyze",
    "analyse_missing",
    is_flag=True,
    help="Analyse the listed jobs that have no features yet, and store them.",
)
@click.option("--rules", metavar="FILE", help=RULES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs_command(db: str | None, user: str | None, name: str | None, since: str | None,
                 until: str | None, min_nodes: int | None, bottleneck: str | None, limit: int,
                 analyse_missing: bool, rules: str | None, as_json: bool) -> None:  # fmt: skip
    """Jobs of the feature database with their features (CPU use, memory, GPU, what limits
    them), newest first."""
    from para.analyzer.jobs import jobs_main

    raise SystemExit(
        jobs_main(
            db,
            as_json=as_json,
            analyse_missing=analyse_missing,
            rules=rules,
            user=user,
            name=name,
            since=since,
            until=until,
            min_nodes=min_nodes,
            bottleneck=bottleneck,
            limit=limit,
        )  # fmt: skip
    )
