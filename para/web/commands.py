"""`para web`, and the portal that `para collector serve --web` starts beside the collector
(para/cli.py hands this module to the collector: the collector does not import the portal).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from para.errors import ParaError, UsageError
from para.web.app import WebOptions

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_TLS_DIR = "/etc/para/collector"
DEFAULT_LISTEN = "0.0.0.0:8816"
# keys of a [web] table in --config, and their types
CONFIG_KEYS: dict[str, type] = {
    "admins": list,
    "admin_groups": list,
    "share_accounts": bool,
    "share_groups": list,
    "trusted_proxies": list,
    "user_headers": list,
    "tokens": str,
    "cache_mb": int,
    "max_node_seconds": float,
    "max_range_days": float,
    "refresh_s": float,
}


def load_config(path: str | None) -> dict[str, Any]:
    """The [web] table of a TOML file, checked (unknown keys and wrong types are errors)."""
    if not path:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ParaError(f"cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ParaError(f"{path}: not valid TOML: {e}") from e
    table = doc.get("web", doc)
    if not isinstance(table, dict):
        raise ParaError(f"{path}: [web] must be a table")
    out: dict[str, Any] = {}
    for k, v in table.items():
        want = CONFIG_KEYS.get(k)
        if want is None:
            raise ParaError(
                f"{path}: unknown key web.{k}", hint="known keys: " + ", ".join(CONFIG_KEYS)
            )
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or (
            isinstance(v, list) and not all(isinstance(x, str) for x in v)
        ):
            raise ParaError(
                f"{path}: web.{k} must be {'a list of strings' if want is list else want.__name__}"
            )
        out[k] = v
    return out


def options(
    *,
    db: str,
    listen: str,
    tls_dir: str,
    cert: str | None,
    key: str | None,
    insecure: bool,
    config: dict[str, Any],
    live: Any = None,
    port_file: str | None = None,
    quiet: bool = False,
    **cli: Any,
) -> WebOptions:
    """The portal's options: command-line values win over the config file's."""
    tdir = Path(tls_dir)

    def pick(name: str, default: Any) -> Any:
        v = cli.get(name)
        if v not in (None, (), []):
            return v
        return config.get(name, default)

    tokens = pick("tokens", None)
    if tokens is None and (tdir / "web-tokens.json").exists():
        tokens = str(tdir / "web-tokens.json")
    return WebOptions(
        db=Path(db),
        listen=listen,
        cert_file=None if insecure else Path(cert or tdir / "server.crt"),
        key_file=None if insecure else Path(key or tdir / "server.key"),
        insecure=insecure,
        tokens_file=Path(tokens) if tokens else None,
        trusted_proxies=tuple(pick("trusted_proxies", ())),
        user_headers=tuple(pick("user_headers", ("X-Forwarded-User",))),
        admins=tuple(pick("admins", ())),
        admin_groups=tuple(pick("admin_groups", ())),
        share_accounts=bool(pick("share_accounts", False)),
        share_groups=tuple(pick("share_groups", ())),
        cache_mb=int(pick("cache_mb", 256)),
        max_node_seconds=float(pick("max_node_seconds", 2_000_000.0)),
        max_range_days=float(pick("max_range_days", 31.0)),
        refresh_s=float(pick("refresh_s", 5.0)),
        rules=cli.get("rules"),
        port_file=Path(port_file) if port_file else None,
        quiet=quiet,
        live=live,
    )


def start_beside_collector(
    listen: str, config_file: str | None, collector_opts: Any, summary: Any
) -> Any:
    """`para collector serve --web`: the portal in a thread of the collector, live from it.
    Returns a function that stops it."""
    from para.web.live import InProcess
    from para.web.server import WebServer

    cfg = load_config(config_file)
    tls_dir = str(Path(collector_opts.cert_file).parent) if collector_opts.cert_file else "."
    opts = options(
        db=str(collector_opts.db),
        listen=listen,
        tls_dir=tls_dir,
        cert=str(collector_opts.cert_file) if collector_opts.cert_file else None,
        key=str(collector_opts.key_file) if collector_opts.key_file else None,
        insecure=bool(collector_opts.insecure),
        config=cfg,
        live=InProcess(summary),
        quiet=bool(collector_opts.quiet),
    )
    web = WebServer(opts).start()
    web.log(f"serving {web.url}/ beside the collector")
    return web


@click.command("web", context_settings=CONTEXT)
@click.option(
    "--db",
    metavar="DIR",
    envvar="PARA_DB",
    default="/var/lib/para/db",
    show_default=True,
    help="The feature database ($PARA_DB).",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address to serve on (port 0: any free port).",
)
@click.option(
    "--tls-dir",
    default=DEFAULT_TLS_DIR,
    show_default=True,
    metavar="DIR",
    help="Where server.crt, server.key and web-tokens.json are.",
)
@click.option("--cert", metavar="FILE", help="HTTPS certificate (default TLS_DIR/server.crt).")
@click.option("--key", metavar="FILE", help="Its private key (default TLS_DIR/server.key).")
@click.option(
    "--insecure",
    is_flag=True,
    help="Plain HTTP (only behind a TLS-terminating proxy on this host).",
)
@click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    help="A TOML file with a [web] table (docs/web.md); options given here win.",
)
@click.option(
    "--admin",
    "admins",
    multiple=True,
    metavar="USER",
    help="A sysadmin: sees every job (repeatable).",
)
@click.option(
    "--admin-group",
    "admin_groups",
    multiple=True,
    metavar="GROUP",
    help="Members of this Unix group are sysadmins (repeatable).",
)
@click.option(
    "--share-accounts",
    is_flag=True,
    default=None,
    help="Users also see the jobs of the accounts they charge.",
)
@click.option(
    "--share-group",
    "share_groups",
    multiple=True,
    metavar="GROUP",
    help="Members of this Unix group see each other's jobs (repeatable).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDR",
    help="Believe the user header from this address or network (repeatable).",
)
@click.option(
    "--user-header",
    "user_headers",
    multiple=True,
    metavar="NAME",
    help="Header naming the user (default X-Forwarded-User; e.g. REMOTE_USER).",
)
@click.option(
    "--tokens",
    metavar="FILE",
    help="People's tokens (para collector add-token NAME --reader --tokens FILE); "
    "default TLS_DIR/web-tokens.json if present.",
)
@click.option(
    "--collector",
    metavar="URL",
    multiple=True,
    help="The live cluster from this collector (grpc+tls://HOST:8815). Repeat it for sharded "
    "collectors: every shard's nodes as one cluster.",
)
@click.option(
    "--shards-from",
    metavar="FILE",
    help="Every collector shard an agent configuration names ([collector] url and fallback), "
    "read as one cluster (its CA taken unless --collector-ca).",
)
@click.option("--collector-ca", metavar="FILE", help="CA of the collector's certificate.")
@click.option("--reader-cert", metavar="FILE", help="A reader certificate for --collector.")
@click.option("--reader-key", metavar="FILE", help="Its key.")
@click.option("--reader-token-file", metavar="FILE", help="A reader token for --collector.")
@click.option("--collector-insecure", is_flag=True, help="Allow a plaintext --collector URL.")
@click.option("--cache-mb", type=int, help="Memory for rendered job pages (default 256).")
@click.option(
    "--max-node-seconds",
    type=float,
    help="Largest job analysed here, in nodes x seconds (default 2,000,000).",
)
@click.option("--max-range-days", type=float, help="Longest node range shown (default 31).")
@click.option("--rules", metavar="FILE", envvar="PARA_RULES", help="Bottleneck thresholds.")
@click.option("--port-file", metavar="FILE", help="Write {port, pid} as JSON once serving.")
@click.option("-q", "--quiet", is_flag=True, help="Log only problems.")
def web_command(
    db: str,
    listen: str,
    tls_dir: str,
    cert: str | None,
    key: str | None,
    insecure: bool,
    config_file: str | None,
    collector: tuple[str, ...],
    shards_from: str | None,
    collector_ca: str | None,
    reader_cert: str | None,
    reader_key: str | None,
    reader_token_file: str | None,
    collector_insecure: bool,
    port_file: str | None,
    quiet: bool,
    **cli: Any,
) -> None:
    """The web portal: the cluster live, jobs and their analysis, nodes, alerts.

    \b
    para web --db /var/lib/para/db --collector grpc+tls://collector:8815 \\
        --collector-ca ca.crt --reader-cert web.crt --reader-key web.key --admin root
    Sharded collectors: repeat --collector, or --shards-from /etc/para/agent.toml.
    Or beside the collector: para collector serve --web 0.0.0.0:8816.  See docs/web.md.
    """
    from para.web.server import serve

    if not os.path.isdir(db):
        raise UsageError(
            f"no feature database at {db}", hint="give --db DIR (or PARA_DB): the collector's --db"
        )
    live = None
    urls = list(collector)
    if shards_from:
        from para.analyzer.topdata import shards_of

        more, shard_ca, shard_insecure = shards_of(shards_from)
        urls += more
        collector_ca = collector_ca or shard_ca
        collector_insecure = collector_insecure or shard_insecure
    if urls:
        from para.analyzer.topdata import collector_source

        live = collector_source(
            urls, collector_ca, reader_cert, reader_key, reader_token_file, collector_insecure
        )
    opts = options(
        db=db,
        listen=listen,
        tls_dir=tls_dir,
        cert=cert,
        key=key,
        insecure=insecure,
        config=load_config(config_file),
        live=live,
        port_file=port_file,
        quiet=quiet,
        **cli,
    )
    raise SystemExit(serve(opts))
