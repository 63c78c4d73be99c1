"""`para collector serve`: the Arrow Flight service agents ship to, and the threads that merge
what arrives into the feature database and keep it tidy.

Threads: the gate's (gate.py: TLS, who is calling, what a caller's bytes may cost, on the
public address; Flight itself listens on a private Unix socket behind it), gRPC's (receive:
store + acknowledge, many at once), one merger (incoming/ -> data/), one for upkeep
(catalogue snapshots, compaction, retention).  A receive never waits for a merge, so a slow
disk or a long compaction delays the database, never the agents' acks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl

from para.collector import maintenance
from para.collector.auth import (
    REVOKED_FILE,
    AuthError,
    Identity,
    Revoked,
    TokenStore,
    identity_from_certificate,
)
from para.collector.db import FeatureDB, StoreFull, is_disk_full
from para.collector.gate import IDENTITY_HEADER, Gate, server_ssl_context
from para.collector.livebuf import LiveBuffer
from para.collector.store import IncomingStore
from para.errors import ParaError
from para.formats import wire

# Hosts remembered in `para collector status` for what they sent wrong (the latest kept).
MAX_OFFENDERS = 1000


@dataclass
class ServeOptions:
    db: Path
    listen: str = f"0.0.0.0:{wire.DEFAULT_PORT}"
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    auth: str = "mtls"  # mtls | token
    tokens_file: Path | None = None
    insecure: bool = False
    cluster: str = "default"
    min_free_bytes: int = 256 << 20
    max_segment_bytes: int = 1 << 30
    retention_days: dict[str, float] = field(default_factory=dict)
    compact_every: float = 600.0
    expire_after_hours: float = 24.0  # dataset.expire's grace period
    retention_every: float = 3600.0
    export_every: float = 2.0
    port_file: Path | None = None
    quiet: bool = False
    alert_rules: Path | None = None  # issue 6: alert rules (docs/alerts.md)
    metrics_listen: str | None = None  # issue 6: serve /metrics there (off when None)
    judge: Any = None  # the analyzer's bottleneck rules (alerts.BottleneckJudge), from para/cli.py
    # issue 15: starts the web portal beside the service (handed in by para/cli.py):
    # web(service) -> a server with `port` and `stop()`
    web: Any = None
    # issue 16: False serves Flight itself on --listen, as before the gate (no bound before
    # authentication under --auth token, identity as Flight gives it): for measurements only
    gate: bool = True


class _TokenMiddleware(fl.ServerMiddleware):
    def __init__(self, identity: Identity):
        self.identity = identity


class _TokenFactory(fl.ServerMiddlewareFactory):
    def __init__(self, tokens: TokenStore):
        self.tokens = tokens

    def start_call(self, info: fl.CallInfo, headers: dict[str, list[str]]) -> _TokenMiddleware:
        values = headers.get("authorization") or []
        try:
            ident = self.tokens.identify(values[0] if values else None)
        except AuthError as e:
            raise fl.FlightUnauthenticatedError(str(e)) from None
        except ParaError as e:
            raise fl.FlightUnavailableError(f"collector cannot read its tokens: {e}") from None
        return _TokenMiddleware(ident)


class _GateIdentity(fl.ServerMiddleware):
    def __init__(self, identity: Identity):
        self.identity = identity


class _GateIdentityFactory(fl.ServerMiddlewareFactory):
    """The caller as the gate established it (its `x-para-identity` header; the gate removes
    any a client sent, and only the gate can reach the Unix socket Flight listens on)."""

    def start_call(self, info: fl.CallInfo, headers: dict[str, list[str]]) -> _GateIdentity:
        values = headers.get(IDENTITY_HEADER.decode()) or []
        words = str(values[0]).split(" ") if len(values) == 1 else []
        role, name, via = (words + ["", "", ""])[:3]
        try:
            if role == wire.ROLE_AGENT:
                wire.check_host(name)
            elif role == wire.ROLE_READER:
                wire.check_reader_name(name)
            else:
                raise wire.WireError(f"role {role!r}")
        except wire.WireError as e:
            raise fl.FlightUnauthenticatedError(f"no identity from the gate: {e.message}") from None
        return _GateIdentity(Identity(role, name, via))


@dataclass
class Counters:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    unavailable: int = 0
    denied: int = 0
    bytes: int = 0
    merged: int = 0
    merged_values: int = 0
    quarantined: int = 0
    live_samples: int = 0
    live_refused: int = 0
    live_dropped: int = 0
    last_rejection: str = ""
    last_error: str = ""


class CollectorService(fl.FlightServerBase):
    def __init__(self, opts: ServeOptions, log: Callable[[str], None]):
        self.opts = opts
        self.log = log
        self.db = FeatureDB(opts.db, cluster=opts.cluster)
        self.store = IncomingStore(
            self.db, min_free_bytes=opts.min_free_bytes, max_segment_bytes=opts.max_segment_bytes
        )
        self.counters = Counters()
        self.revoked = Revoked(opts.db / REVOKED_FILE)
        self._lock = threading.Lock()
        self._live = LiveBuffer()
        self._live_logged: dict[str, float] = {}
        self._offenders: dict[str, dict[str, Any]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._meta_dirty = True
        self._catalog_dirty = True
        self._full_logged = -1e9
        self.started = time.time()
        self.gate: Gate | None = None
        self._sockdir: str | None = None
        kwargs: dict[str, Any] = {}
        if opts.insecure:
            scheme = "grpc+tcp"
            if opts.auth == "mtls":
                raise ParaError(
                    "--insecure has no TLS, so no client certificates: use --auth token",
                )
        else:
            scheme = "grpc+tls"
            if not (opts.cert_file and opts.key_file):
                raise ParaError(
                    "TLS needs the server certificate and key (--cert, --key or --tls-dir)",
                    hint="create them with `para collector init-ca`, or pass --insecure "
                    "for plaintext on a trusted network",
                )
            kwargs["tls_certificates"] = [
                fl.CertKeyPair(_read(opts.cert_file), _read(opts.key_file))
            ]
            if opts.auth == "mtls":
                if not opts.ca_file:
                    raise ParaError("--auth mtls needs the CA that signed the agents (--ca)")
                kwargs["verify_client"] = True
                kwargs["root_certificates"] = _read(opts.ca_file)
        tokens = None
        if opts.auth == "token":
            if not opts.tokens_file:
                raise ParaError("--auth token needs a tokens file (--tokens)")
            tokens = TokenStore(opts.tokens_file)
            kwargs["middleware"] = {"auth": _TokenFactory(tokens)}
        elif opts.auth != "mtls":
            raise ParaError(f"unknown --auth {opts.auth!r}: mtls or token")
        host, _, port = opts.listen.rpartition(":")
        if opts.gate:
            # TLS and credentials are the gate's; Flight listens where only we can reach it
            ssl_context = None
            if not opts.insecure:
                assert opts.cert_file is not None and opts.key_file is not None
                ssl_context = server_ssl_context(
                    opts.cert_file, opts.key_file, opts.ca_file if opts.auth == "mtls" else None
                )
            self._sockdir = tempfile.mkdtemp(prefix="para-collector-")  # mode 0700
            flight_location = f"grpc+unix://{self._sockdir}/flight.sock"
            kwargs = {"middleware": {"gate": _GateIdentityFactory()}}
        else:
            flight_location = f"{scheme}://{host}:{int(port)}"
        # Before serving: finish what a killed collector left half done.
        lost = self.db.recover()
        if lost:
            log(
                f"error: {len(lost)} data file(s) of merged batches were neither in staging/ nor "
                f"in place (lost by a crash of the disk?): {', '.join(lost[:10])}"
            )
        removed = self.store.clean()
        if removed:
            log(f"removed {removed} unacknowledged partial uploads left by the last run")
        # The live view (para top, alerts, /metrics): a bad rules file stops us here, before
        # anything listens.
        from para.collector.alerts import AlertService

        self.alerts = AlertService(opts.alert_rules, self.db, opts.cluster, log, judge=opts.judge)
        self.alerts.offend = self._offend
        self.metrics: Any = None
        try:
            if opts.metrics_listen:
                from para.live.openmetrics import MetricsServer

                self.metrics = MetricsServer(opts.metrics_listen, self.alerts.metric_families)
                log(f"serving /metrics on http://{self.metrics.address}/metrics")
        except BaseException:
            self.alerts.stop()
            raise
        try:
            super().__init__(flight_location, **kwargs)
        except (pa.ArrowException, OSError) as e:
            self._stop_live()
            raise ParaError(f"cannot listen on {opts.listen}: {e}") from e
        except BaseException:
            self._stop_live()
            raise
        if self._sockdir is not None:
            self.gate = Gate(
                host,
                int(port),
                f"{self._sockdir}/flight.sock",
                ssl_context=ssl_context,
                tokens=tokens,
                revoked=self.revoked,
                report=self._gate_refused,
                log=log,
            )
            try:
                self.gate.start()
            except BaseException as e:
                self.shutdown()
                self._stop_live()
                shutil.rmtree(self._sockdir, ignore_errors=True)
                if isinstance(e, OSError):
                    raise ParaError(f"cannot listen on {opts.listen}: {e}") from e
                raise
        self.location = f"{scheme}://{host}:{self.port}"
        self._threads = [
            threading.Thread(target=self._merge_loop, name="para-collector-merge", daemon=True),
            threading.Thread(target=self._upkeep_loop, name="para-collector-upkeep", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def port(self) -> int:
        """The public port: the gate's, or Flight's own without the gate."""
        gate = getattr(self, "gate", None)
        return gate.port if gate is not None else int(super().port)

    def _gate_refused(self, who: str, kind: str, why: str) -> None:
        if kind in ("unauthenticated", "denied"):
            with self._lock:
                self.counters.denied += 1
        self._offend(who, kind, why)

    def _stop_live(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        self.alerts.stop()

    # -- identity --------------------------------------------------------------------------
    def _identity(self, context: fl.ServerCallContext) -> Identity:
        if self.gate is not None:
            mw = context.get_middleware("gate")
            if mw is None:
                raise fl.FlightUnauthenticatedError("no credential")
            ident = mw.identity
        elif self.opts.auth == "token":
            mw = context.get_middleware("auth")
            if mw is None:
                raise fl.FlightUnauthenticatedError("no credential")
            ident = mw.identity
        else:
            try:
                ident = identity_from_certificate(context.peer_identity())
            except AuthError as e:
                raise fl.FlightUnauthenticatedError(str(e)) from None
        try:
            self.revoked.check(ident)
        except AuthError as e:
            with self._lock:
                self.counters.denied += 1
            self._offend(ident.name, "denied", str(e))
            self.log(f"denied: {e}")
            raise fl.FlightUnauthenticatedError(str(e)) from None
        except ParaError as e:
            raise fl.FlightUnavailableError(f"collector cannot read its deny list: {e}") from None
        return ident

    def _agent(self, context: fl.ServerCallContext, host: str) -> Identity:
        ident = self._identity(context)
        if ident.role != wire.ROLE_AGENT or ident.name != host:
            with self._lock:
                self.counters.denied += 1
            what = (
                "readers may not write"
                if ident.role != wire.ROLE_AGENT
                else (f"it may write host {ident.name!r} only")
            )
            self._offend(ident.name, "denied", f"tried to write host {host!r}")
            self.log(f"denied: {ident.describe()} tried to write host {host!r}")
            raise fl.FlightUnauthorizedError(
                f"{ident.describe()} may not write data of host {host!r}: {what}"
            )
        return ident

    def _reader(self, context: fl.ServerCallContext) -> Identity:
        ident = self._identity(context)
        if ident.role != wire.ROLE_READER:
            with self._lock:
                self.counters.denied += 1
            raise fl.FlightUnauthorizedError(
                f"{ident.describe()} may not read: use an analyst's (reader) credential"
            )
        return ident

    # -- segments --------------------------------------------------------------------------
    def do_put(
        self,
        context: fl.ServerCallContext,
        descriptor: fl.FlightDescriptor,
        reader: fl.MetadataRecordBatchReader,
        writer: fl.FlightMetadataWriter,
    ) -> None:
        try:
            header = wire.PutHeader.decode(descriptor.command or b"")
        except wire.WireError as e:
            self._identity(context)
            self._reject("?", f"bad upload descriptor: {e.message}")
            raise fl.FlightServerError(f"para-reject: {e.message}") from None
        self._agent(context, header.host)
        if reader.schema.names != [wire.CHUNK_COLUMN] or not pa.types.is_binary(
            reader.schema.field(0).type
        ):
            ack = wire.Ack(wire.REJECTED, header.id, "upload stream is not one binary column")
        else:
            try:
                ack = self.store.receive(header, _chunks(reader))
            except StoreFull as e:
                with self._lock:
                    self.counters.unavailable += 1
                    self.counters.last_error = e.message
                    now = time.monotonic()
                    quiet = now - self._full_logged < 60
                    if not quiet:
                        self._full_logged = now
                if not quiet:  # once a minute, not once per retry of every agent
                    self.log(f"refusing segments ({header.name} from {header.host}): {e.message}")
                raise fl.FlightUnavailableError(e.message) from None
            except Exception as e:  # a bug or an I/O error: the agent retries, we say why
                with self._lock:
                    self.counters.last_error = f"{type(e).__name__}: {e}"
                self.log(f"error storing {header.name} from {header.host}: {e!r}")
                raise fl.FlightUnavailableError(
                    f"collector could not store the segment: {e}"
                ) from None
        with self._lock:
            if ack.status == wire.STORED:
                self.counters.stored += 1
                self.counters.bytes += header.size
            elif ack.status == wire.DUPLICATE:
                self.counters.duplicates += 1
        if ack.status == wire.REJECTED:
            self._reject(header.host, ack.reason)
        elif ack.status == wire.DUPLICATE:
            # answered before the upload was read (its id is known): read the rest, or the call
            # may end with the agent still writing and our answer lost (it would send again)
            _drain(reader)
        writer.write(pa.py_buffer(ack.encode()))
        if ack.status == wire.STORED:
            self._wake.set()

    def _reject(self, host: str, reason: str) -> None:
        with self._lock:
            self.counters.rejected += 1
            self.counters.last_rejection = reason
        self._offend(host, "rejected", reason)
        self.log(f"rejected a segment from {host}: {reason}")

    def _live_refused(self, host: str, why: str) -> None:
        with self._lock:
            self.counters.live_refused += 1
            now = time.monotonic()
            quiet = now - self._live_logged.get(host, -1e9) < 60
            if not quiet:
                self._live_logged[host] = now
        self._offend(host, "live_refused", why)
        if not quiet:  # once a minute per host: a flood must not flood the log too
            self.log(f"refused live samples from {host}: {why}")

    def _offend(self, host: str, what: str, reason: str) -> None:
        """Remember what `host` sent wrong, for `para collector status` (bounded)."""
        with self._lock:
            o = self._offenders.pop(host, None) or {}
            o[what] = o.get(what, 0) + 1
            o["last"] = reason[:500]
            o["at"] = round(time.time(), 3)
            self._offenders[host] = o
            while len(self._offenders) > MAX_OFFENDERS:
                del self._offenders[next(iter(self._offenders))]

    # -- actions ---------------------------------------------------------------------------
    def list_actions(self, context: fl.ServerCallContext) -> list[tuple[str, str]]:
        return [
            (wire.ACTION_LIVE, "agents: the last samples of their host"),
            (wire.ACTION_STATUS, "readers: the collector's counters and database state"),
            (wire.ACTION_LIVE_SNAPSHOT, "readers: the live samples kept per host"),
            (wire.ACTION_TOP, "readers: the cluster for para top (nodes, jobs, alerts)"),
            (wire.ACTION_ALERTS, "readers: the alerts firing now and the latest records"),
        ]

    def do_action(self, context: fl.ServerCallContext, action: fl.Action) -> Iterator[fl.Result]:
        kind = action.type
        body = action.body.to_pybytes() if action.body is not None else b""
        if kind == wire.ACTION_LIVE:
            ident = self._identity(context)
            try:
                host, samples, nbytes = wire.decode_live_sized(body)
            except wire.WireError as e:
                self._live_refused(ident.name, e.message)
                raise fl.FlightServerError(f"para-reject: {e.message}") from None
            self._agent(context, host)
            if not self._live.add(host, samples, nbytes):
                why = (
                    f"live message of {nbytes} bytes: more than the {self._live.bytes_per_host} "
                    "kept per host"
                )
                self._live_refused(host, why)
                raise fl.FlightServerError(f"para-reject: {why}")
            with self._lock:
                self.counters.live_samples += len(samples)
            if not self.alerts.ingest(host, samples, nbytes):
                with self._lock:
                    self.counters.live_dropped += len(samples)
            return iter([fl.Result(pa.py_buffer(b'{"ok":true}'))])
        if kind == wire.ACTION_STATUS:
            self._reader(context)
            return iter([fl.Result(pa.py_buffer(json.dumps(self.status()).encode()))])
        if kind == wire.ACTION_LIVE_SNAPSHOT:
            self._reader(context)
            try:
                req = json.loads(body) if body else {}
            except ValueError:
                raise fl.FlightServerError(
                    "para-reject: live-snapshot request is not JSON"
                ) from None
            want = req.get("host") if isinstance(req, dict) else None
            snap = self._live.snapshot(want if isinstance(want, str) else None)
            return iter([fl.Result(pa.py_buffer(json.dumps(snap).encode()))])
        if kind == wire.ACTION_TOP:
            self._reader(context)
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                raise fl.FlightServerError("para-reject: top request is not JSON") from None
            doc = self.alerts.summary(req if isinstance(req, dict) else {})
            return iter([fl.Result(pa.py_buffer(json.dumps(doc, default=str).encode()))])
        if kind == wire.ACTION_ALERTS:
            self._reader(context)
            doc = {"active": self.alerts.active(), "recent": list(self.alerts.recent),
                   "status": self.alerts.status()}  # fmt: skip
            return iter([fl.Result(pa.py_buffer(json.dumps(doc, default=str).encode()))])
        self._identity(context)
        raise fl.FlightServerError(f"unknown action {kind!r}")

    def status(self) -> dict[str, Any]:
        with self._lock:
            c = dict(self.counters.__dict__)
            offenders = {h: dict(o) for h, o in self._offenders.items()}
        return {
            "location": self.location,
            "cluster": self.opts.cluster,
            "auth": self.opts.auth,
            "uptime_s": round(time.time() - self.started, 1),
            "received": c,
            "database": self.db.status(),
            "live_hosts": len(self._live),
            "live": self._live.status(),
            "offenders": offenders,
            "alerts": self.alerts.status(),
            "gate": self.gate.status() if self.gate is not None else None,
        }

    # -- background work -------------------------------------------------------------------
    def _merge_loop(self) -> None:
        full_logged = False
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    rep = self.db.merge_received()
                except StoreFull as e:
                    if not full_logged:
                        self.log(f"merge postponed: {e.message}")
                        full_logged = True
                    self._stop.wait(5.0)
                    break
                except Exception:
                    self.log("merge failed (will retry):\n" + traceback.format_exc())
                    self._stop.wait(5.0)
                    break
                full_logged = False
                if rep.merged == 0 and rep.quarantined == 0:
                    break
                with self._lock:
                    self.counters.merged += rep.merged
                    self.counters.merged_values += rep.values
                    self.counters.quarantined += rep.quarantined
                self._meta_dirty = True
                self._catalog_dirty = True  # its views list each snapshot's files
                for host, why in rep.problems:
                    self._offend(host, "quarantined", why)
                    self.log(f"quarantined a segment of {host}: {why}")

    def _upkeep_loop(self) -> None:
        next_compact = time.monotonic() + self.opts.compact_every
        next_retention = time.monotonic() + min(60.0, self.opts.retention_every)
        upkeep_full = False
        while not self._stop.wait(self.opts.export_every):
            try:
                if self._meta_dirty:
                    self._meta_dirty = False
                    try:
                        self.db.export_meta()
                    except BaseException:
                        self._meta_dirty = True  # not done: again next round
                        raise
                    upkeep_full = False
                if self._catalog_dirty:
                    self._catalog_dirty = not self.db.refresh_catalog(timeout=1.0)
                now = time.monotonic()
                if self.opts.compact_every > 0 and now >= next_compact:
                    next_compact = now + self.opts.compact_every
                    rep = maintenance.compact(self.db)
                    if rep.files_in:
                        self.log(f"compacted {rep.files_in} files into {rep.files_out}")
                        self._catalog_dirty = True
                    expired = maintenance.expire(self.db, self.opts.expire_after_hours)
                    if expired.files:
                        self.log(f"deleted {expired.files} expired files")
                if self.opts.retention_days and now >= next_retention:
                    next_retention = now + self.opts.retention_every
                    gone = maintenance.apply_retention(self.db, self.opts.retention_days)
                    if gone.partitions:
                        self.log(f"retention removed {gone.partitions} partitions")
                        self._meta_dirty = True
                        self._catalog_dirty = True
            except Exception as e:
                if is_disk_full(e):
                    self._meta_dirty = True
                    if not upkeep_full:
                        self.log(f"upkeep postponed while the disk is full ({e})")
                    upkeep_full = True
                else:
                    self.log("upkeep failed (will retry):\n" + traceback.format_exc())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.gate is not None:
            self.gate.stop()
        self.shutdown()
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
        self._stop_live()
        for t in self._threads:
            t.join(timeout=60)
        try:
            self.db.export_meta()
        except Exception as e:
            self.log(f"could not write the catalogue snapshots at exit: {e}")
        self.db.close()


def _chunks(reader: fl.MetadataRecordBatchReader) -> Iterator[pa.Buffer]:
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            return
        if chunk.data is None:
            continue
        col = chunk.data.column(0)
        for i in range(len(col)):
            buf = col[i].as_buffer()
            if buf is not None:
                yield buf


def _drain(reader: fl.MetadataRecordBatchReader) -> None:
    try:
        while True:
            reader.read_chunk()
    except StopIteration:
        return
    except pa.ArrowException:
        return  # the agent went away: nobody waits for the answer


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ParaError(f"cannot read {path}: {e.strerror}") from e


def serve(opts: ServeOptions, out: Any = None) -> int:
    """Run until SIGTERM or SIGINT; returns the exit code."""
    out = out or sys.stderr

    def log(msg: str) -> None:
        if not opts.quiet or msg.startswith(("error", "merge failed", "upkeep failed")):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp} para collector: {msg}", file=out, flush=True)

    service = CollectorService(opts, log)
    mode = "plaintext (--insecure)" if opts.insecure else "TLS"
    who = "mutual TLS (client certificates)" if opts.auth == "mtls" else "bearer tokens"
    if service.gate is None:
        who += "; no gate"
    log(
        f"listening on {service.location} ({mode}, {who}); database {opts.db}, "
        f"cluster {opts.cluster}"
    )
    web = None
    if opts.web is not None:
        try:
            web = opts.web(service)
        except BaseException:
            service.stop()
            raise
    if opts.port_file:
        tmp = Path(str(opts.port_file) + ".tmp")
        doc = {"port": service.port, "pid": os.getpid()}
        if service.metrics is not None:
            doc["metrics_port"] = service.metrics.port
        if web is not None:
            doc["web_port"] = web.port
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, opts.port_file)
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not done.wait(1.0):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        log("stopping: finishing the merge in progress")
        if web is not None:
            web.stop()
        service.stop()
        log("stopped")
    return 0
