"""The portal's pages and their JSON: one Starlette application (docs/web.md).

Every page is rendered on the server from Jinja templates with autoescaping; data a page's
script draws travels as JSON in a non-executed script element or from /api/..., and the
script shows strings with textContent only.  The content security policy allows scripts from
the portal itself and nothing inline.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from para.errors import ParaError
from para.web.access import SESSION_COOKIE, Policy, Sessions, Viewer, check_user
from para.web.jobpage import JobPages
from para.web.live import METRICS, Live, heatmap
from para.web.store import NotFound, Store, TooLarge

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
# the job's report page has its own policy (a meta element, hashes); these add what a meta
# element cannot say
REPORT_CSP = "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
NAV = [("/cluster", "Cluster"), ("/jobs", "Jobs"), ("/alerts", "Alerts")]
RANGES = {"1h": 3600, "6h": 6 * 3600, "1d": 86400, "7d": 7 * 86400, "31d": 31 * 86400}
TIMELINE_POINTS = 1200
_REL = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9/_.,;=?&%+-]*$")


@dataclass
class WebOptions:
    db: Path
    listen: str = "0.0.0.0:8816"
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    tokens_file: Path | None = None
    trusted_proxies: tuple[str, ...] = ()
    user_headers: tuple[str, ...] = ("X-Forwarded-User",)
    admins: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()
    share_accounts: bool = False
    share_groups: tuple[str, ...] = ()
    cache_mb: int = 256
    max_node_seconds: float = 2_000_000.0
    max_range_days: float = 31.0
    refresh_s: float = 5.0
    rules: str | None = None
    port_file: Path | None = None
    quiet: bool = False
    live: Any = None  # a live source (para.web.live), or None: the database only
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BadRequest(ParaError):
    exit_code = 2


def parse_time(text: str | None, now: float | None = None, what: str = "time") -> float | None:
    """Epoch seconds from `2026-11-22`, `2026-11-22T10:00` (UTC unless it says), an epoch
    number, or `-6h` (before now)."""
    if text is None or not str(text).strip():
        return None
    s = str(text).strip()
    m = _REL.match(s)
    if m:
        return (now or time.time()) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        v = float(s)
        if math.isfinite(v):
            return v
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{what} {s!r} is not a time",
            hint="write 2026-11-22, 2026-11-22T10:00 (UTC), epoch seconds or -6h",
        ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def _int(text: str | None, default: int, what: str) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{what} {text!r} is not a whole number") from None


def _utc(ms: Any, seconds: bool = False) -> str:
    if ms is None:
        return "-"
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(float(ms) / 1000, timezone.utc).strftime(fmt)


def _dur(s: Any) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _size(v: Any) -> str:
    from para.analyzer.summary import fmt_bytes

    return "-" if v is None else fmt_bytes(float(v))


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f} %"


class Portal:
    def __init__(self, opts: WebOptions, log: Callable[[str], None] | None = None):
        self.opts = opts
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.store = Store(opts.db, threads=opts.threads)
        self.pages = JobPages(
            self.store,
            opts.db,
            cache_bytes=opts.cache_mb << 20,
            max_node_seconds=opts.max_node_seconds,
            rules=opts.rules,
        )
        from para.web.access import parse_networks

        self.policy = Policy(
            admins=frozenset(opts.admins),
            admin_groups=frozenset(opts.admin_groups),
            share_accounts=opts.share_accounts,
            share_groups=frozenset(opts.share_groups),
            trusted_proxies=parse_networks(opts.trusted_proxies),
            user_headers=tuple(h.lower() for h in opts.user_headers),
        )
        self.tokens: Any = None
        if opts.tokens_file is not None:
            from para.collector.auth import TokenStore

            self.tokens = TokenStore(opts.tokens_file)
        self.sessions = Sessions()
        self.live = Live(opts.live)
        self._untrusted_logged: dict[str, float] = {}
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("para.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters.update(utc=_utc, dur=_dur, size=_size, pct=_pct, urlq=_urlq)
        self._static: dict[str, tuple[bytes, bytes, str, str]] = {}

    # -- who -----------------------------------------------------------------------------
    def identify(self, request: Request) -> Viewer | None:
        peer = request.client.host if request.client else None
        for h in self.policy.user_headers:
            value = request.headers.get(h)
            if value is None:
                continue
            if not self.policy.is_trusted_proxy(peer):
                self._untrusted(peer, h)
                continue
            name = check_user(value)
            if name is None:
                self.log(f"refused the user name {value[:80]!r} in {h} from proxy {peer}")
                return None
            return self.policy.viewer(name, "proxy")
        auth = request.headers.get("authorization")
        if auth and self.tokens is not None:
            return self._token_viewer(auth, peer)
        name = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if name is not None:
            return self.policy.viewer(name, "session")
        return None

    def _untrusted(self, peer: str | None, header: str) -> None:
        now = time.monotonic()
        key = f"{peer}|{header}"
        if now - self._untrusted_logged.get(key, -1e9) > 60:
            self._untrusted_logged[key] = now
            self.log(
                f"ignored the {header} header from {peer}: not a trusted proxy (--trusted-proxy)"
            )

    def _token_viewer(self, header: str, peer: str | None) -> Viewer | None:
        from para.collector.auth import AuthError
        from para.formats import wire

        try:
            ident = self.tokens.identify(header)
        except AuthError as e:
            self.log(f"refused a token from {peer}: {e}")
            return None
        if ident.role != wire.ROLE_READER:
            self.log(f"refused a token of {ident.describe()} from {peer}: not a person's")
            return None
        return self.policy.viewer(ident.name, "token")

    # -- rendering -----------------------------------------------------------------------
    def html(self, name: str, viewer: Viewer | None, status: int = 200, **ctx: Any) -> Response:
        text = self.env.get_template(name).render(
            viewer=viewer, nav=NAV, refresh_s=self.opts.refresh_s, **ctx
        )
        return HTMLResponse(text, status_code=status, headers=self._headers(CSP))

    def _headers(self, csp: str) -> dict[str, str]:
        h = {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
        }
        if not self.opts.insecure:
            h["Strict-Transport-Security"] = "max-age=31536000"
        return h

    def error(self, request: Request, viewer: Viewer | None, status: int, e: ParaError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"error": e.message, "hint": e.hint}, status_code=status, headers=self._headers(CSP)
            )
        return self.html(
            "error.html.j2",
            viewer,
            status=status,
            status_code=status,
            message=e.message,
            hint=e.hint,
        )

    def static(self, name: str) -> tuple[bytes, bytes, str, str]:
        """(bytes, gzipped bytes, content type, etag) of a static file."""
        hit = self._static.get(name)
        if hit is not None:
            return hit
        if name == "plotly.min.js":
            from plotly.offline import get_plotlyjs

            data = get_plotlyjs().encode()
        else:
            data = resources.files("para.web").joinpath(f"static/{name}").read_bytes()
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        got = (
            data,
            gzip.compress(data, 6),
            f"{kind}; charset=utf-8",
            '"' + hashlib.sha256(data).hexdigest()[:32] + '"',
        )
        self._static[name] = got
        return got


def _urlq(v: Any) -> str:
    return quote(str(v), safe="")


Handler = Callable[[Portal, Request, Viewer], Awaitable[Response]]


def page(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page that needs a signed-in viewer: errors become clear pages (or JSON)."""

    async def endpoint(request: Request) -> Response:
        portal: Portal = request.app.state.portal
        viewer = portal.identify(request)
        if viewer is None:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "sign in first"}, status_code=401)
            return portal.html(
                "login.html.j2",
                None,
                status=401,
                next=str(request.url.path),
                tokens=portal.tokens is not None,
                failed=False,
            )
        try:
            return await fn(portal, request, viewer)
        except NotFound as e:
            return portal.error(request, viewer, 404, e)
        except TooLarge as e:
            return portal.error(request, viewer, 413, e)
        except BadRequest as e:
            return portal.error(request, viewer, 400, e)
        except ParaError as e:
            portal.log(f"error on {request.url.path}: {e.message}")
            return portal.error(request, viewer, 503, e)
        except Exception as e:  # a bug: logged with its traceback, the page says so
            import traceback

            portal.log(f"error on {request.url.path}:\n{traceback.format_exc()}")
            return portal.error(
                request,
                viewer,
                500,
                ParaError(f"internal error ({type(e).__name__}); it is logged at the server"),
            )

    return endpoint


# -- the cluster -------------------------------------------------------------------------------


async def cluster_page(portal: Portal, request: Request, viewer: Viewer) -> Response:
    return portal.html("cluster.html.j2", viewer, metrics=METRICS, live=portal.live.available)


def _visible_jobs(portal: Portal, viewer: Viewer, jobs: list[dict[str, Any]]) -> set[str]:
    if viewer.admin:
        return {str(j) for j in (x.get("job") for x in jobs) if j is not None}
    out = {str(j["job"]) for j in jobs if viewer.sees_user(j.get("user"))}
    rest = [str(j["job"]) for j in jobs if str(j["job"]) not in out]
    if rest:
        cond, params = portal.store.visible(viewer, portal.policy.share_accounts)
        with portal.store.cursor() as cur:
            rows = cur.execute(
                f"SELECT job_id FROM web_jobs WHERE list_contains(?, job_id) AND {cond}",
                [rest, *params],
            ).fetchall()
        out |= {r[0] for r in rows}
    return out


def _alert_job(a: dict[str, Any]) -> str | None:
    labels = a.get("labels") or {}
    job = labels.get("job") if isinstance(labels, dict) else None
    return str(job) if job is not None else None


def cluster_doc(portal: Portal, viewer: Viewer, metric: str) -> dict[str, Any]:
    doc = portal.live.snapshot(metric)
    jobs = doc.get("jobs") or []
    alerts = doc.get("alerts") or []
    seen = _visible_jobs(
        portal, viewer, jobs + [{"job": j} for j in filter(None, map(_alert_job, alerts))]
    )
    out_jobs = [
        {
            k: j.get(k)
            for k in (
                "job",
                "user",
                "name",
                "app",
                "since",
                "hosts",
                "cpu_cores",
                "cpus",
                "rss_bytes",
                "io_bps",
                "gpu_util_pct",
            )
        }
        for j in jobs
        if str(j.get("job")) in seen
    ]
    out_alerts = []
    for a in alerts:
        job = _alert_job(a)
        if job is not None and job not in seen:
            continue
        row = {
            k: a.get(k)
            for k in ("rule", "severity", "host", "summary", "started", "value", "unit", "type")
        }
        row["job"] = job
        row["jobs"] = [j for j in (a.get("jobs") or []) if str(j) in seen]
        out_alerts.append(row)
    nodes = doc.get("nodes") or []
    return {
        "t": doc.get("t"),
        "cluster": doc.get("cluster"),
        "metric": metric,
        "heatmap": heatmap(doc, metric),
        "nodes": len(nodes),
        "stale": sum(1 for n in nodes if (n.get("age_s") or 0) > 30),
        # sharded collectors: which answered (the nodes of one that did not are missing)
        "shards": [
            {k: s.get(k) for k in ("shard", "ok", "error", "nodes")}
            for s in doc.get("shards") or []
        ],
        "jobs": out_jobs,
        "alerts": out_alerts,
        "refresh_s": portal.opts.refresh_s,
    }


async def cluster_api(portal: Portal, request: Request, viewer: Viewer) -> Response:
    metric = request.query_params.get("metric", "cpu")
    if metric not in METRICS:
        raise BadRequest(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
    doc = await run_in_threadpool(cluster_doc, portal, viewer, metric)
    return JSONResponse(doc, headers=portal._headers(CSP))


# -- jobs ----------------------------------------------------------------------------------


JOB_FILTERS = (
    "q",
    "user",
    "account",
    "partition",
    "app",
    "name",
    "bottleneck",
    "node",
    "state",
    "since",
    "until",
    "min_nodes",
)


def _job_filters(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
    qp = request.query_params
    raw = {k: qp[k] for k in JOB_FILTERS if qp.get(k)}
    filters: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("since", "until")}
    for k in ("since", "until"):
        if k in raw:
            filters[k] = parse_time(raw[k], what=k)
    if "min_nodes" in raw:
        filters["min_nodes"] = _int(raw["min_nodes"], 0, "min_nodes")
    if raw.get("state") not in (None, "running", "ended"):
        raise BadRequest(f"state {raw['state']!r}: running or ended")
    return filters, raw


def _jobs(
    portal: Portal, request: Request, viewer: Viewer
) -> tuple[Any, dict[str, str], str, bool]:
    from para.web.store import SORTS

    filters, raw = _job_filters(request)
    qp = request.query_params
    sort = qp.get("sort", "start")
    if sort not in SORTS:
        raise BadRequest(f"cannot sort by {sort!r}: one of {', '.join(SORTS)}")
    desc = qp.get("dir", "desc") != "asc"
    page_no = _int(qp.get("page"), 1, "page")
    size = _int(qp.get("size"), 50, "size")
    got = portal.store.jobs(
        viewer, portal.policy.share_accounts, filters, sort, desc, page_no, size
    )
    return got, raw, sort, desc


async def jobs_page(portal: Portal, request: Request, viewer: Viewer) -> Response:
    got, raw, sort, desc = await run_in_threadpool(_jobs, portal, request, viewer)
    facets = await run_in_threadpool(portal.store.facets, viewer, portal.policy.share_accounts)

    def link(**change: Any) -> str:
        q = {
            **raw,
            "sort": sort,
            "dir": "desc" if desc else "asc",
            "page": str(got.page),
            "size": str(got.size),
        }
        q.update({k: str(v) for k, v in change.items()})
        return "/jobs?" + urlencode({k: v for k, v in q.items() if v not in ("", None)})

    return portal.html(
        "jobs.html.j2",
        viewer,
        page=got,
        filters=raw,
        sort=sort,
        desc=desc,
        facets=facets,
        link=link,
    )


async def jobs_api(portal: Portal, request: Request, viewer: Viewer) -> Response:
    got, raw, sort, desc = await run_in_threadpool(_jobs, portal, request, viewer)
    return JSONResponse(
        {
            "jobs": got.rows,
            "total": got.total,
            "page": got.page,
            "size": got.size,
            "pages": got.pages,
            "sort": sort,
            "dir": "desc" if desc else "asc",
        },
        headers=portal._headers(CSP),
    )


def _job_or_404(portal: Portal, viewer: Viewer, job_id: str, request: Request) -> dict[str, Any]:
    try:
        return portal.store.job(viewer, portal.policy.share_accounts, job_id)
    except NotFound:
        if not viewer.admin:
            admin = Viewer(viewer.name, True, viewer.via)
            try:
                owner = portal.store.job(admin, False, job_id).get("user")
            except NotFound:
                owner = None
            else:
                peer = request.client.host if request.client else "?"
                portal.log(
                    f"denied: {viewer.name} ({viewer.via}, {peer}) asked for job "
                    f"{job_id!r} of {owner!r}: answered 404"
                )
        raise


async def job_page(portal: Portal, request: Request, viewer: Viewer) -> Response:
    job_id = request.path_params["job_id"]
    job = await run_in_threadpool(_job_or_404, portal, viewer, job_id, request)
    portal_ctx = {
        "nav": NAV + [(f"/jobs/{_urlq(job_id)}", f"job {job_id}")],
        "node_href": "/nodes/",
        "plotly_src": "/static/plotly.min.js",
        "compare": f"/jobs/{_urlq(job_id)}/compare" if job.get("app") else None,
    }
    rendered, cached = await run_in_threadpool(portal.pages.page, job, portal_ctx)
    headers = portal._headers(REPORT_CSP)
    headers["X-Para-Cache"] = "hit" if cached else "miss"
    headers["X-Para-Render-Seconds"] = f"{rendered.seconds:.3f}"
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = await run_in_threadpool(rendered.gzipped)
        headers.update({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)
    return HTMLResponse(rendered.html, headers=headers)


async def compare_page(portal: Portal, request: Request, viewer: Viewer) -> Response:
    job_id = request.path_params["job_id"]
    job = await run_in_threadpool(_job_or_404, portal, viewer, job_id, request)
    others = await run_in_threadpool(
        portal.store.same_app, viewer, portal.policy.share_accounts, job
    )
    other_id = request.query_params.get("with")
    doc = None
    other = None
    if other_id:
        other = await run_in_threadpool(_job_or_404, portal, viewer, other_id, request)
        if other.get("app") != job.get("app"):
            raise BadRequest(
                f"job {other_id} ran {other.get('app')!r}, not {job.get('app')!r}",
                hint="compare jobs of the same application",
            )
        doc, _ = await run_in_threadpool(portal.pages.compare, job, other)
    return portal.html("compare.html.j2", viewer, job=job, others=others, other=other, doc=doc)


# -- nodes -----------------------------------------------------------------------------------


def _range(portal: Portal, request: Request, host: dict[str, Any]) -> tuple[float, float, str]:
    qp = request.query_params
    last = (host.get("last_seen") or time.time() * 1000) / 1000
    preset = qp.get("range") or ("" if qp.get("from") else "6h")
    if preset and preset not in RANGES:
        raise BadRequest(f"range {preset!r}: one of {', '.join(RANGES)}")
    t1 = parse_time(qp.get("to"), what="to") or last
    t0 = parse_time(qp.get("from"), what="from") if not preset else t1 - RANGES[preset]
    assert t0 is not None
    if not (qp.get("range") or qp.get("from")) and host.get("first_seen"):
        # the default: no more than the node's data (at least a minute)
        t0 = min(max(t0, host["first_seen"] / 1000), t1 - 60)
    if t1 <= t0:
        raise BadRequest("the range ends before it starts", hint="from must be before to")
    limit = portal.opts.max_range_days * 86400
    if t1 - t0 > limit:
        raise TooLarge(
            f"{(t1 - t0) / 86400:,.1f} days is longer than this portal shows at once "
            f"({portal.opts.max_range_days:g} days)",
            hint="choose a shorter range; para query reads any range from the database",
        )
    return t0, t1, preset


def _node(portal: Portal, request: Request, viewer: Viewer, name: str) -> dict[str, Any]:
    host = portal.store.host(name)
    t0, t1, preset = _range(portal, request, host)
    tl = portal.store.timelines(name, t0, t1, TIMELINE_POINTS)
    jobs = portal.store.jobs(
        viewer, portal.policy.share_accounts, {"node": name}, "start", True, 1, 50
    )
    alerts = portal.store.alerts(viewer, portal.policy.share_accounts, {"host": name}, 1, 50)
    return {
        "host": host,
        "t0": t0,
        "t1": t1,
        "preset": preset,
        "timelines": tl,
        "jobs": jobs,
        "alerts": alerts,
    }


async def node_page(portal: Portal, request: Request, viewer: Viewer) -> Response:
    name = request.path_params["host"]
    d = await run_in_threadpool(_node, portal, request, viewer, name)
    return portal.html("node.html.j2", viewer, ranges=list(RANGES), **d)


async def node_api(portal: Portal, request: Request, viewer: Viewer) -> Response:
    name = request.path_params["host"]
    d = await run_in_threadpool(_node, portal, request, viewer, name)
    return JSONResponse(
        {"host": name, "from": d["t0"], "to": d["t1"], "timelines": d["timelines"]},
        headers=portal._headers(CSP),
    )


# -- alerts ---------------------------------------------------------------------------------

ALERT_FILTERS = ("rule", "severity", "host", "job", "event", "type", "since", "until")


def _alerts(portal: Portal, request: Request, viewer: Viewer) -> tuple[Any, dict[str, str]]:
    qp = request.query_params
    raw = {k: qp[k] for k in ALERT_FILTERS if qp.get(k)}
    filters: dict[str, Any] = dict(raw)
    for k in ("since", "until"):
        if k in raw:
            filters[k] = parse_time(raw[k], what=k)
    got = portal.store.alerts(
        viewer,
        portal.policy.share_accounts,
        filters,
        _int(qp.get("page"), 1, "page"),
        _int(qp.get("size"), 50, "size"),
    )
    return got, raw


async def alerts_page(portal: Portal, request: Request, viewer: Viewer) -> Response:
    got, raw = await run_in_threadpool(_alerts, portal, request, viewer)
    facets = await run_in_threadpool(portal.store.alert_facets)

    def link(**change: Any) -> str:
        q = {**raw, "page": str(got.page)}
        q.update({k: str(v) for k, v in change.items()})
        return "/alerts?" + urlencode({k: v for k, v in q.items() if v})

    return portal.html("alerts.html.j2", viewer, page=got, filters=raw, facets=facets, link=link)


async def alerts_api(portal: Portal, request: Request, viewer: Viewer) -> Response:
    got, _ = await run_in_threadpool(_alerts, portal, request, viewer)
    return JSONResponse(
        {"alerts": got.rows, "total": got.total, "page": got.page, "pages": got.pages},
        headers=portal._headers(CSP),
    )


# -- signing in, static files ----------------------------------------------------------------


async def login(request: Request) -> Response:
    portal: Portal = request.app.state.portal
    nxt = request.query_params.get("next", "/cluster")
    if request.method == "GET":
        return portal.html(
            "login.html.j2",
            portal.identify(request),
            next=nxt,
            tokens=portal.tokens is not None,
            failed=False,
        )
    from urllib.parse import parse_qs

    body = await request.body()
    form = parse_qs(body[:8192].decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    nxt = (form.get("next") or ["/cluster"])[0]
    if not _LOCAL_PATH.match(nxt):
        nxt = "/cluster"  # only pages of the portal (not //host, /\\host, or a scheme)
    viewer = None
    if portal.tokens is not None and token:
        peer = request.client.host if request.client else None
        viewer = await run_in_threadpool(portal._token_viewer, f"Bearer {token}", peer)
    if viewer is None:
        return portal.html(
            "login.html.j2",
            None,
            status=401,
            next=nxt,
            tokens=portal.tokens is not None,
            failed=True,
        )
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(
        SESSION_COOKIE,
        portal.sessions.make(viewer.name),
        httponly=True,
        secure=not portal.opts.insecure,
        samesite="strict",
        max_age=int(portal.sessions.lifetime_s),
    )
    return resp


async def logout(request: Request) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp


async def static(request: Request) -> Response:
    portal: Portal = request.app.state.portal
    name = request.path_params["name"]
    if name not in ("plotly.min.js", "portal.js", "portal.css"):
        return Response("not found", status_code=404, media_type="text/plain")
    data, gz, kind, etag = portal.static(name)
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return Response(gz, media_type=kind, headers=headers)
    return Response(data, media_type=kind, headers=headers)


async def home(request: Request) -> Response:
    return RedirectResponse("/cluster", status_code=302)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


def make_app(opts: WebOptions, log: Callable[[str], None] | None = None) -> Starlette:
    portal = Portal(opts, log)
    routes = [
        Route("/", home),
        Route("/healthz", healthz),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{name}", static),
        Route("/cluster", page(cluster_page)),
        Route("/api/cluster", page(cluster_api)),
        Route("/jobs", page(jobs_page)),
        Route("/api/jobs", page(jobs_api)),
        Route("/jobs/{job_id}", page(job_page)),
        Route("/jobs/{job_id}/compare", page(compare_page)),
        Route("/nodes/{host}", page(node_page)),
        Route("/api/nodes/{host}", page(node_api)),
        Route("/alerts", page(alerts_page)),
        Route("/api/alerts", page(alerts_api)),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return portal.error(
            request, None, 404, NotFound(f"no page {request.url.path}", hint="start from /cluster")
        )

    app = Starlette(
        routes=routes,
        middleware=[Middleware(GZipMiddleware, minimum_size=2048)],
        exception_handlers={404: not_found},
    )
    app.state.portal = portal
    return app
