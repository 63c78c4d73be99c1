"""The collector's commands: `para collector ...`, `para collect`, `para query`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from para.errors import ParaError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_TLS_DIR = "/etc/para/collector"
DEFAULT_SERVER_DB = "/var/lib/para/db"
DEFAULT_METRICS = "127.0.0.1:9467"


def _db_default(server: bool = False) -> str:
    return os.environ.get("PARA_DB") or (DEFAULT_SERVER_DB if server else "para-db")


def _db_option(server: bool = False) -> Callable[[F], F]:
    where = DEFAULT_SERVER_DB if server else "./para-db"
    return click.option(
        "--db",
        "db",
        metavar="DIR",
        default=lambda: _db_default(server),
        show_default=f"$PARA_DB, else {where}",
        help="The feature database directory.",
    )


def _retention(values: tuple[str, ...]) -> dict[str, float]:
    from para.collector.maintenance import parse_age
    from para.formats import wire

    out: dict[str, float] = {}
    for v in values:
        table, sep, age = v.partition("=")
        if not sep:
            raise UsageError(
                f"--retention {v!r}: expected TABLE=AGE", hint="e.g. --retention proc=30d"
            )
        if table not in ("default", "jobs"):
            wire.check_table_name(table)
        try:
            out[table] = parse_age(age)
        except ValueError as e:
            raise UsageError(f"--retention {v!r}: {e}") from None
    return out


@click.group("collector", context_settings=CONTEXT)
def collector_group() -> None:
    """Receive the agents' segments over TLS and build the feature database.

    \b
    Stand a site up:   para collector init-ca
                       para collector issue-cert NODE        (one per node)
                       para collector serve --db /var/lib/para/db
    See docs/collector.md.
    """


@collector_group.command(context_settings=CONTEXT)
@_db_option(server=True)
@click.option(
    "--listen",
    default="0.0.0.0:8815",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on (port 0: any free port).",
)
@click.option(
    "--tls-dir",
    default=DEFAULT_TLS_DIR,
    show_default=True,
    metavar="DIR",
    help="Where init-ca wrote server.crt, server.key and ca.crt.",
)
@click.option("--cert", metavar="FILE", help="Server certificate (default TLS_DIR/server.crt).")
@click.option("--key", metavar="FILE", help="Its private key (default TLS_DIR/server.key).")
@click.option("--ca", metavar="FILE", help="CA of the client certificates (TLS_DIR/ca.crt).")
@click.option(
    "--auth",
    type=click.Choice(["mtls", "token"]),
    default="mtls",
    show_default=True,
    help="How agents and readers prove who they are.",
)
@click.option(
    "--tokens", metavar="FILE", help="Tokens file for --auth token (TLS_DIR/tokens.json)."
)
@click.option("--insecure", is_flag=True, help="Plaintext gRPC, no TLS (needs --auth token).")
@click.option("--cluster", default="default", show_default=True, help="Cluster name (partition).")
@click.option(
    "--retention",
    multiple=True,
    metavar="TABLE=AGE",
    help="Keep TABLE's data this long (30d, 12h, 1y); TABLE may be `default` or `jobs`.",
)
@click.option(
    "--compact-every",
    type=float,
    default=600.0,
    show_default=True,
    metavar="S",
    help="Seconds between compactions of small files (0: never).",
)
@click.option(
    "--expire-after",
    default="24h",
    show_default=True,
    metavar="AGE",
    help="Delete files compaction or retention removed this long ago (readers of older "
    "snapshots keep them until then).",
)
@click.option(
    "--min-free-mb",
    type=int,
    default=256,
    show_default=True,
    help="Refuse segments (agents retry later) when less disk than this is free.",
)
@click.option("--max-segment-mb", type=int, default=1024, show_default=True)
@click.option("--port-file", metavar="FILE", help="Write {port, pid} as JSON once listening.")
@click.option(
    "--alerts",
    "alert_rules",
    metavar="FILE",
    help="Evaluate the alert rules of FILE on the live stream (docs/alerts.md).",
)
@click.option(
    "--metrics",
    "metrics_on",
    is_flag=True,
    help="Serve Prometheus/OpenMetrics /metrics on 127.0.0.1:9467.",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve /metrics on this address instead (implies --metrics).",
)
@click.option(
    "--web",
    "web_listen",
    metavar="HOST:PORT",
    help="Also serve the web portal there (HTTPS with the collector's certificate; docs/web.md).",
)
@click.option("--web-config", metavar="FILE", help="The portal's [web] settings (TOML).")
@click.option(
    "--no-gate",
    is_flag=True,
    hidden=True,
    help="Serve Arrow Flight directly, without the gate (for measurements: docs/collector.md).",
)
@click.option("-q", "--quiet", is_flag=True, help="Log only problems.")
def serve(
    db: str,
    listen: str,
    tls_dir: str,
    cert: str | None,
    key: str | None,
    ca: str | None,
    auth: str,
    tokens: str | None,
    insecure: bool,
    cluster: str,
    retention: tuple[str, ...],
    compact_every: float,
    expire_after: str,
    min_free_mb: int,
    max_segment_mb: int,
    port_file: str | None,
    alert_rules: str | None,
    metrics_on: bool,
    metrics_listen: str | None,
    web_listen: str | None,
    web_config: str | None,
    no_gate: bool,
    quiet: bool,
) -> None:
    """Receive segments from agents and merge them into the feature database."""
    from para.collector.server import ServeOptions
    from para.collector.server import serve as run_serve
    from para.formats import wire

    tdir = Path(tls_dir)
    opts = ServeOptions(
        db=Path(db),
        listen=listen,
        cert_file=None if insecure else Path(cert or tdir / "server.crt"),
        key_file=None if insecure else Path(key or tdir / "server.key"),
        ca_file=Path(ca or tdir / "ca.crt"),
        auth=auth,
        tokens_file=Path(tokens or tdir / "tokens.json"),
        insecure=insecure,
        cluster=wire.check_cluster(cluster),
        min_free_bytes=min_free_mb << 20,
        max_segment_bytes=max_segment_mb << 20,
        retention_days=_retention(retention),
        compact_every=compact_every,
        expire_after_hours=_hours(expire_after),
        port_file=Path(port_file) if port_file else None,
        quiet=quiet,
        alert_rules=Path(alert_rules) if alert_rules else None,
        metrics_listen=metrics_listen or (DEFAULT_METRICS if metrics_on else None),
        judge=_judge() if alert_rules else None,
        web=_part("web_beside_collector", web_listen, web_config) if web_listen else None,
        gate=not no_gate,
    )
    raise SystemExit(run_serve(opts))


def _part(name: str, *args: Any) -> Any:
    """What para/cli.py lends the collector from a part downstream of it (the portal)."""
    ctx = click.get_current_context(silent=True)
    parts = ctx.find_root().obj if ctx is not None else None
    factory = parts.get(name) if isinstance(parts, dict) else None
    if factory is None:
        raise ParaError(f"this para has no {name.replace('_', ' ')}",
                        hint="run the collector through the `para` command")  # fmt: skip
    return factory(*args)


def _judge() -> Any:
    """The analyzer's bottleneck rules, which the `para` command hands to the collector
    (para/cli.py): the collector sits upstream of the analyzer and does not import it."""
    ctx = click.get_current_context(silent=True)
    parts = ctx.find_root().obj if ctx is not None else None
    factory = parts.get("bottleneck_judge") if isinstance(parts, dict) else None
    return factory() if factory is not None else None


@collector_group.command("check-alerts", context_settings=CONTEXT)
@click.argument("file", metavar="FILE")
def check_alerts(file: str) -> None:
    """Check an alert rules file: every problem with its line, else what would run."""
    from para.live import rules

    judge = _judge()
    try:
        rs = rules.load(file, judge.rule_ids() if judge is not None else None)
    except ParaError as e:
        click.echo(e.message, err=True)
        raise SystemExit(1) from None
    click.echo(f"{file}: OK, {len(rs.rules)} rules, sinks {', '.join(sorted(rs.sinks))}")
    for r in rs.rules:
        what = r.metric.text if r.metric is not None else (r.bottleneck or "")
        click.echo(f"  {r.name:24} {r.type:10} {r.severity:8} {what}  -> {', '.join(r.sinks)}")


@collector_group.command("init-ca", context_settings=CONTEXT)
@click.option("--dir", "directory", default=DEFAULT_TLS_DIR, show_default=True, metavar="DIR")
@click.option("--name", default="para collector CA", show_default=True, help="CA common name.")
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    metavar="NAME",
    help="Name or address agents dial (repeatable; default: this host's names, localhost).",
)
@click.option("--days", type=int, default=3650, show_default=True, help="CA validity.")
@click.option("--force", is_flag=True, help="Replace an existing CA.")
def init_ca(
    directory: str, name: str, server_names: tuple[str, ...], days: int, force: bool
) -> None:
    """Create a certificate authority and the collector's server certificate."""
    from para.collector import tls

    ca, server = tls.init_ca(
        directory, name=name, days=days, server_names=list(server_names) or None, force=force
    )
    click.echo(f"CA          {ca.cert} (key {ca.key}, keep it private)")
    click.echo(f"server      {server.cert}, {server.key} for {server.subject}")
    click.echo(f"Next: para collector issue-cert NODE --dir {directory}   (one per node)")
    click.echo(f"      para collector serve --tls-dir {directory} --db /var/lib/para/db")


@collector_group.command("issue-cert", context_settings=CONTEXT)
@click.argument("name")
@click.option("--dir", "directory", default=DEFAULT_TLS_DIR, show_default=True, metavar="DIR")
@click.option("--out", metavar="DIR", help="Where to write NAME.crt/.key (default DIR/issued).")
@click.option(
    "--days",
    type=int,
    default=30,
    show_default=True,
    help="Validity (short: renew with `para collector renew`).",
)
@click.option("--reader", is_flag=True, help="An analyst's read-only certificate.")
def issue_cert(name: str, directory: str, out: str | None, days: int, reader: bool) -> None:
    """Sign a client certificate for node NAME (its host name), or a reader."""
    from para.collector import tls

    got = tls.issue(directory, name, out=out, days=days, reader=reader)
    click.echo(f"certificate {got.cert}  ({got.subject}, valid to {got.not_after:%Y-%m-%d})")
    click.echo(f"key         {got.key}")
    click.echo(f"CA          {got.ca}")
    if not reader:
        click.echo(
            "Copy the three files to the node, and in its agent.toml:\n"
            "  [collector]\n"
            '  url = "grpc+tls://COLLECTOR:8815"\n'
            f'  ca_file = "/etc/para/ca.crt"\n'
            f'  cert_file = "/etc/para/{got.cert.name}"\n'
            f'  key_file = "/etc/para/{got.key.name}"'
        )


@collector_group.command("renew", context_settings=CONTEXT)
@click.option("--dir", "directory", default=DEFAULT_TLS_DIR, show_default=True, metavar="DIR")
@click.option("--out", metavar="DIR", help="Where the certificates are (default DIR/issued).")
@click.option("--within-days", type=float, default=10, show_default=True)
@click.option("--days", type=int, default=30, show_default=True, help="Validity of the new ones.")
def renew_command(directory: str, out: str | None, within_days: float, days: int) -> None:
    """Re-issue the client certificates that expire soon (run it daily, then copy them out)."""
    from para.collector import tls

    got = tls.renew(directory, within_days=within_days, days=days, out=out)
    for g in got:
        click.echo(f"renewed     {g.cert}  ({g.subject}, valid to {g.not_after:%Y-%m-%d})")
    click.echo(f"{len(got)} certificate(s) renewed; copy each with its key to its node", err=True)


@collector_group.command("revoke", context_settings=CONTEXT)
@click.argument("name", required=False)
@_db_option(server=True)
@click.option("--reader", is_flag=True, help="NAME is an analyst (reader), not a node.")
@click.option(
    "--cert",
    "cert_file",
    metavar="FILE",
    help="Revoke this certificate (by its serial) instead of a name: the node stays welcome "
    "with a new one.",
)
@click.option("--reason", default="", help="Said to the refused caller and in the log.")
@click.option("--undo", is_flag=True, help="Lift the revocation (after issuing a new key).")
def revoke_command(
    name: str | None, db: str, reader: bool, cert_file: str | None, reason: str, undo: bool
) -> None:
    """Refuse node NAME (or a reader, or one certificate) from the next call on; the
    collector also drops the connections it holds."""
    from para.collector.auth import REVOKED_FILE, Revoked

    path = Path(db) / REVOKED_FILE
    state = "no longer revoked" if undo else "revoked"
    if cert_file:
        if name:
            raise click.UsageError("give NAME or --cert FILE, not both")
        try:
            pem = Path(cert_file).read_bytes()
        except OSError as e:
            raise ParaError(f"cannot read {cert_file}: {e.strerror}") from e
        serial, subject, changed = Revoked(path).change_certificate(
            pem, revoke=not undo, reason=reason
        )
        what = f"certificate {serial} ({subject})"
    elif name:
        changed = Revoked(path).change(name, reader=reader, revoke=not undo, reason=reason)
        what = "reader " + name if reader else "host " + name
    else:
        raise click.UsageError("give the NAME to revoke, or --cert FILE")
    click.echo(f"{what} {state}{'' if changed else ' (already)'}: {path}")


@collector_group.command("add-token", context_settings=CONTEXT)
@click.argument("name")
@click.option(
    "--tokens",
    default=f"{DEFAULT_TLS_DIR}/tokens.json",
    show_default=True,
    metavar="FILE",
    help="The collector's tokens file.",
)
@click.option("--reader", is_flag=True, help="An analyst's read-only token.")
@click.option("--days", type=float, help="Expire after this many days.")
def add_token(name: str, tokens: str, reader: bool, days: float | None) -> None:
    """Create a bearer token for node NAME (or a reader); prints it once."""
    from para.collector.auth import TokenStore

    token = TokenStore(tokens).add(name, reader=reader, days=days)
    click.echo(token)
    click.echo(
        f"Token for {'reader' if reader else 'host'} {name} added to {tokens} (only its "
        "SHA-256 is kept). Put it in a file readable by the agent only (token_file).",
        err=True,
    )


@collector_group.command(context_settings=CONTEXT)
@_db_option(server=True)
@click.option("--url", help="Ask a running collector instead (needs a reader credential).")
@click.option("--ca", metavar="FILE")
@click.option("--cert", metavar="FILE")
@click.option("--key", metavar="FILE")
@click.option("--token-file", metavar="FILE")
@click.option("--insecure", is_flag=True)
def status(
    db: str,
    url: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token_file: str | None,
    insecure: bool,
) -> None:
    """What the database holds (or, with --url, what a running collector reports)."""
    if url:
        from para.agent.collector_client import (
            CollectorClient,
            Denied,
            Transient,
            reader_endpoint,
        )

        ep = reader_endpoint(url, ca, cert, key, token_file, insecure, timeout=30)
        try:
            with CollectorClient(ep) as client:
                doc = client.status()
        except (Denied, Transient) as e:
            raise ParaError(f"collector at {url}: {e}") from None
    else:
        from para.collector.db import FeatureDB

        fdb = FeatureDB(db)
        if not fdb.exists():
            raise ParaError(f"no feature database at {db}")
        doc = fdb.status()
    click.echo(json.dumps(doc, indent=1))


@collector_group.command(context_settings=CONTEXT)
@_db_option(server=True)
@click.option("--min-files", type=int, default=4, show_default=True)
def compact(db: str, min_files: int) -> None:
    """Merge small data files (the collector also does it every --compact-every)."""
    from para.collector.db import FeatureDB
    from para.collector.maintenance import compact as run_compact

    fdb = FeatureDB(db)
    if not fdb.exists():
        raise ParaError(f"no feature database at {db}")
    rep = run_compact(fdb, min_files=min_files)
    click.echo(
        f"compacted {rep.files_in} files ({rep.bytes_in:,} bytes) of {rep.partitions} "
        f"partitions into {rep.files_out} ({rep.bytes_out:,} bytes), {rep.rows:,} rows"
    )


def _hours(text: str) -> float:
    from para.collector.maintenance import parse_age

    try:
        return parse_age(text) * 24
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@collector_group.command(context_settings=CONTEXT)
@_db_option(server=True)
@click.option(
    "--older-than",
    default="24h",
    show_default=True,
    metavar="AGE",
    help="Grace period: keep files removed less than AGE ago (0 deletes them all now).",
)
def expire(db: str, older_than: str) -> None:
    """Delete the data files that compaction, retention or a meta rewrite removed from the
    tables more than AGE ago (the collector does it every --compact-every)."""
    from para.collector.db import FeatureDB
    from para.collector.maintenance import expire as run_expire

    fdb = FeatureDB(db)
    if not fdb.exists():
        raise ParaError(f"no feature database at {db}")
    rep = run_expire(fdb, _hours(older_than))
    click.echo(
        f"deleted {rep.files} expired files of {len(rep.tables)} tables"
        + (f" ({', '.join(sorted(rep.tables))})" if rep.tables else "")
    )


@collector_group.command(context_settings=CONTEXT)
@_db_option(server=True)
@click.option("--retention", multiple=True, required=True, metavar="TABLE=AGE")
def retain(db: str, retention: tuple[str, ...]) -> None:
    """Delete data older than each table's limit."""
    from para.collector.db import FeatureDB
    from para.collector.maintenance import apply_retention

    fdb = FeatureDB(db)
    if not fdb.exists():
        raise ParaError(f"no feature database at {db}")
    rep = apply_retention(fdb, _retention(retention))
    click.echo(
        f"removed {rep.partitions} partitions ({rep.bytes:,} bytes); forgot "
        f"{rep.segments_forgotten} segment ids and {rep.jobs_forgotten} jobs"
    )


@click.command("collect", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@_db_option()
@click.option("--cluster", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("-q", "--quiet", is_flag=True, help="Print only problems and the total.")
def collect_command(
    paths: tuple[str, ...], db: str, cluster: str, as_json: bool, quiet: bool
) -> None:
    """Import .para files (profile outputs, or a spool copied by hand) into the database.

    A directory is searched for .para files (a spool's ready/ and sent/ included).  Files
    imported before are recognised and skipped.
    """
    from para.collector.db import FeatureDB

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.para") if f.is_file() and "current" not in f.parts)
            if not found:
                click.echo(f"para: no .para files under {p}", err=True)
            files += found
        else:
            files.append(p)

    def show(r: dict) -> None:
        if as_json:
            click.echo(json.dumps(r))
        elif r["status"] == "rejected":
            click.echo(f"para: skipped {r['reason']}", err=True)
        elif not quiet:
            what = f"{r['values']:,} values" if r["status"] == "imported" else "imported before"
            click.echo(f"{r['status']:9} {r['path']}  ({r['host']}, {what})", err=True)

    fdb = FeatureDB(db, cluster=cluster)
    results = fdb.import_paths(files, progress=show)
    fdb.close()
    imported = [r for r in results if r["status"] == "imported"]
    bad = [r for r in results if r["status"] == "rejected"]
    if not as_json:
        click.echo(
            f"{len(imported)} imported ({sum(r['values'] for r in imported):,} values), "
            f"{len(results) - len(imported) - len(bad)} already there, {len(bad)} skipped; "
            f"database {db}",
            err=True,
        )
        if imported:
            click.echo(f'Next: para query --db {db} "SELECT * FROM hosts"', err=True)
    raise SystemExit(1 if bad else 0)


@click.command("query", context_settings=CONTEXT)
@click.argument("sql", required=False)
@click.option(
    "--functions",
    is_flag=True,
    help="Instead of SQL: the functions ranked by the core-hours the agents' call stacks "
    "saw them use, site-wide (with --since, --until).",
)
@click.option("--since", metavar="TIME", help="With --functions: from this time (2026-11-01).")
@click.option("--until", metavar="TIME", help="With --functions: before this time.")
@_db_option()
@click.option("--csv", "fmt", flag_value="csv", help="CSV on stdout.")
@click.option("--json", "fmt", flag_value="json", help="A JSON array of objects on stdout.")
@click.option("--parquet", "parquet_out", metavar="OUT", help="Write the result to OUT.")
@click.option("--max-rows", type=int, default=1000, show_default=True, help="Table output.")
@click.option(
    "--locked",
    is_flag=True,
    help="Locked down, as for queries a server runs for others: SELECT only, no file "
    "outside the database's data, no extensions.",
)
@click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark"]),
    default="duckdb",
    show_default=True,
    help="spark: the same SQL on Apache Spark in local mode (pyspark; docs/database.md).",
)
def query_command(
    sql: str | None,
    functions: bool,
    since: str | None,
    until: str | None,
    db: str,
    fmt: str | None,
    parquet_out: str | None,
    max_rows: int,
    locked: bool,
    engine: str,
) -> None:
    """Run SQL on the feature database (DuckDB, or Spark with --engine spark).

    \b
    Tables: node memory cpu net disk fs proc gpu counters events stacks job ... (each with
    host and job_id), jobs, hosts, catalogue (units and meaning of every column).
      para query "SELECT host, max(load1) FROM node GROUP BY host"
      para query --functions --since 2026-11-01   (functions by core-hours)
    """
    from para.collector.query import function_hours_sql, run

    if functions == bool(sql):
        raise UsageError("give SQL, or --functions (not both)")
    if (since or until) and not functions:
        raise UsageError("--since and --until go with --functions")
    if functions:
        sql = function_hours_sql(since, until)
    assert sql is not None
    if parquet_out and fmt:
        raise UsageError("--parquet writes a file; leave out --csv/--json")
    if engine == "spark" and locked:
        raise UsageError("--locked is for DuckDB only")
    n = run(
        db,
        sql,
        fmt="parquet" if parquet_out else (fmt or "table"),
        out=sys.stdout,
        parquet_out=parquet_out,
        max_rows=max_rows,
        locked=locked,
        engine=engine,
    )
    if parquet_out:
        click.echo(f"wrote {n:,} rows to {parquet_out}", err=True)
