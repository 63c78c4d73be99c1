"""Where alerts go: the log, a webhook (HTTP POST of the alert as JSON, retried), email over
SMTP (STARTTLS or TLS), or a command (the alert as JSON on its standard input).

Each sink but the log has a thread and a queue of its own (`Dispatcher`): a mail server that
takes 30 s, or a webhook retried for minutes, never delays the evaluation or the other sinks.
A queue holds at most QUEUE_MAX notifications; past that the oldest is dropped and counted.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# smtplib, ssl, urllib and subprocess are imported by the sinks that use them: the agent's
# process stays small when it only logs.

QUEUE_MAX = 1000
TYPES = ("log", "webhook", "email", "command")

# type -> key -> (python types, default, what); None default with "required" in what
_KEYS: dict[str, dict[str, tuple[tuple[type, ...], Any, str]]] = {
    "log": {},
    "webhook": {
        "url": ((str,), None, "required: http(s)://HOST[:PORT]/PATH"),
        "headers": ((dict,), {}, "extra HTTP headers (e.g. Authorization)"),
        "timeout": ((int, float), 10.0, "seconds per attempt"),
        "retries": ((int,), 5, "attempts after the first"),
        "backoff": ((int, float), 2.0, "seconds before the first retry, doubled each time"),
        "ca_file": ((str,), None, "CA for an https url (default: the system's)"),
    },
    "email": {
        "host": ((str,), None, "required: the SMTP server"),
        "port": ((int,), 587, "its port (587: submission with STARTTLS)"),
        "starttls": ((bool,), True, "upgrade the connection with STARTTLS"),
        "ssl": ((bool,), False, "TLS from the start (port 465) instead of STARTTLS"),
        "from": ((str,), None, "required: the sender address"),
        "to": ((list, str), None, "required: recipient address(es)"),
        "username": ((str,), None, "log in as (after STARTTLS)"),
        "password_file": ((str,), None, "file holding the password (mode 0600)"),
        "ca_file": ((str,), None, "CA of the server's certificate (default: the system's)"),
        "timeout": ((int, float), 30.0, "seconds per attempt"),
        "retries": ((int,), 3, "attempts after the first"),
        "backoff": ((int, float), 5.0, "seconds before the first retry, doubled each time"),
        "subject_prefix": ((str,), "[para]", "start of the subject line"),
    },
    "command": {
        "command": (
            (list,),
            None,
            'required: the program and its arguments, e.g. ["/usr/local/bin/page", "-t", "hpc"]',
        ),
        "timeout": ((int, float), 30.0, "seconds before it is killed"),
        "retries": ((int,), 0, "attempts after the first"),
        "backoff": ((int, float), 5.0, "seconds before the first retry, doubled each time"),
    },
}


@dataclass
class SinkConfig:
    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    line: int | None = None

    def get(self, key: str) -> Any:
        return self.options.get(key, _KEYS[self.type][key][1])


def validate(typ: Any, opts: dict[str, Any]) -> list[tuple[str | None, str]]:
    """Problems of a [[sink]] table: (key, message)."""
    if typ not in _KEYS:
        return [("type", f"unknown sink type {typ!r} ({', '.join(TYPES)})")]
    keys = _KEYS[typ]
    out: list[tuple[str | None, str]] = []
    for k, v in opts.items():
        if k not in keys:
            out.append((k, f"unknown key for a {typ} sink (known: {', '.join(sorted(keys))})"))
            continue
        types = keys[k][0]
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            want = " or ".join("list" if t is list else t.__name__ for t in types)
            out.append((k, f"must be {want}, not {v!r}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            out.append((k, "must not be negative"))
    for k, (_, _default, what) in keys.items():
        if what.startswith("required") and k not in opts:
            out.append((None, f"a {typ} sink needs `{k}` ({what[len('required: ') :]})"))
    url = opts.get("url")
    if typ == "webhook" and isinstance(url, str) and not url.startswith(("http://", "https://")):
        out.append(("url", "must start with http:// or https://"))
    if typ == "command":
        cmd = opts.get("command")
        if isinstance(cmd, list) and (not cmd or not all(isinstance(a, str) for a in cmd)):
            out.append(("command", "must be a list of strings (the program first)"))
    if typ == "email":
        to = opts.get("to")
        if isinstance(to, list) and not all(isinstance(a, str) and "@" in a for a in to):
            out.append(("to", "must be email addresses"))
        if opts.get("ssl") and opts.get("starttls"):
            out.append(("ssl", "ssl and starttls exclude each other"))
    for k in ("ca_file", "password_file"):
        path = opts.get(k)
        if isinstance(path, str) and not os.access(path, os.R_OK):
            out.append((k, f"cannot read {path}"))
    return out


class SinkError(Exception):
    """A delivery failed; `retry` says whether trying again may help."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


def render_text(note: dict[str, Any]) -> str:
    """The alert in plain words (email body, command-less logs)."""
    lines = [f"{note['event'].upper()} {note['severity']}: {note['rule']}", note["summary"]]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(note["started"]))
    lines.append(
        f"since {when}"
        + (
            f", ended {time.strftime('%H:%M:%S UTC', time.gmtime(note['ended']))}"
            if note.get("ended")
            else ""
        )
    )
    where = [f"host {note['host']}"] if note.get("host") else []
    where += [f"{k} {v}" for k, v in (note.get("labels") or {}).items()]
    if note.get("jobs"):
        where.append("job " + ", ".join(note["jobs"]))
    if where:
        lines.append("; ".join(where))
    ev = note.get("evidence") or {}
    if ev.get("text"):
        lines.append(f"evidence: {ev['text']}")
    lines.append(f"source: {note.get('source')}, cluster {note.get('cluster')}, alert {note['id']}")
    lines.append("")
    lines.append(json.dumps(note, indent=1, default=str))
    return "\n".join(lines) + "\n"


class Sink:
    def __init__(self, cfg: SinkConfig):
        self.cfg = cfg
        self.name = cfg.name

    def send(self, note: dict[str, Any]) -> None:
        raise SinkError(f"sink type {self.cfg.type} cannot send", retry=False)


class LogSink(Sink):
    def __init__(self, cfg: SinkConfig, log: Callable[[str], None]):
        super().__init__(cfg)
        self.log = log

    def send(self, note: dict[str, Any]) -> None:
        jobs = ""
        if note.get("jobs") and not any(f"job {j}" in note["summary"] for j in note["jobs"]):
            jobs = f" (job {', '.join(note['jobs'])})"
        self.log(
            f"alert {note['event']} [{note['severity']}] {note['rule']}: {note['summary']}"
            f"{jobs} id={note['id']}"
        )


class WebhookSink(Sink):
    def send(self, note: dict[str, Any]) -> None:
        import ssl
        import urllib.error
        import urllib.request

        c = self.cfg
        body = json.dumps(note, default=str).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "para-alerts/1"}
        headers.update({str(k): str(v) for k, v in c.get("headers").items()})
        req = urllib.request.Request(c.get("url"), data=body, headers=headers, method="POST")
        ctx = None
        if c.get("url").startswith("https://"):
            ctx = ssl.create_default_context(cafile=c.get("ca_file"))
        try:
            with urllib.request.urlopen(req, timeout=c.get("timeout"), context=ctx) as r:
                r.read()
        except urllib.error.HTTPError as e:
            # 408 timeout, 429 too many requests and 5xx are the receiver's passing trouble
            again = e.code in (408, 429) or e.code >= 500
            raise SinkError(f"HTTP {e.code} {e.reason} from {c.get('url')}", retry=again) from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SinkError(f"cannot POST to {c.get('url')}: {reason}") from e


class EmailSink(Sink):
    def send(self, note: dict[str, Any]) -> None:
        import smtplib
        import ssl
        from email.message import EmailMessage

        c = self.cfg
        msg = EmailMessage()
        host = f" on {note['host']}" if note.get("host") else ""
        jobs = f" (job {', '.join(note['jobs'])})" if note.get("jobs") else ""
        msg["Subject"] = (
            f"{c.get('subject_prefix')} {note['event'].upper()} {note['severity']}: "
            f"{note['rule']}{host}{jobs}"
        )
        msg["From"] = c.get("from")
        to = c.get("to")
        msg["To"] = ", ".join(to) if isinstance(to, list) else to
        msg["X-Para-Alert-Id"] = note["id"]
        msg.set_content(render_text(note))
        ctx = ssl.create_default_context(cafile=c.get("ca_file"))
        password = None
        if c.get("password_file"):
            try:
                password = Path(c.get("password_file")).read_text().strip()
            except OSError as e:
                raise SinkError(f"cannot read {c.get('password_file')}: {e.strerror}", False) from e
        server = f"{c.get('host')}:{c.get('port')}"
        try:
            smtp: smtplib.SMTP
            if c.get("ssl"):
                smtp = smtplib.SMTP_SSL(
                    c.get("host"), c.get("port"), timeout=c.get("timeout"), context=ctx
                )
            else:
                smtp = smtplib.SMTP(c.get("host"), c.get("port"), timeout=c.get("timeout"))
            with smtp:
                smtp.ehlo()
                if c.get("starttls") and not c.get("ssl"):
                    smtp.starttls(context=ctx)
                    smtp.ehlo()
                if c.get("username"):
                    smtp.login(c.get("username"), password or "")
                smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as e:
            raise SinkError(f"{server} refused the login: {e.smtp_error!r}", retry=False) from e
        except smtplib.SMTPRecipientsRefused as e:
            raise SinkError(f"{server} refused the recipients {list(e.recipients)}", False) from e
        except ssl.SSLCertVerificationError as e:
            raise SinkError(
                f"{server}: certificate not trusted ({e.verify_message}); set ca_file", retry=False
            ) from e
        except (smtplib.SMTPException, OSError) as e:
            raise SinkError(f"cannot send mail through {server}: {e}") from e


class CommandSink(Sink):
    def send(self, note: dict[str, Any]) -> None:
        import subprocess

        c = self.cfg
        argv = [str(a) for a in c.get("command")]
        env = dict(os.environ)
        env.update(
            {
                "PARA_ALERT_ID": note["id"],
                "PARA_ALERT_EVENT": note["event"],
                "PARA_ALERT_STATE": note["state"],
                "PARA_ALERT_RULE": note["rule"],
                "PARA_ALERT_SEVERITY": note["severity"],
                "PARA_ALERT_HOST": note.get("host") or "",
                "PARA_ALERT_JOBS": ",".join(note.get("jobs") or []),
                "PARA_ALERT_SUMMARY": note["summary"],
            }
        )
        try:
            done = subprocess.run(
                argv,
                input=json.dumps(note, default=str).encode(),
                env=env,
                capture_output=True,
                timeout=c.get("timeout"),
            )
        except FileNotFoundError as e:
            raise SinkError(f"no such program: {argv[0]}", retry=False) from e
        except subprocess.TimeoutExpired as e:
            raise SinkError(f"{argv[0]} did not finish in {c.get('timeout'):g} s (killed)") from e
        except OSError as e:
            raise SinkError(f"cannot run {argv[0]}: {e.strerror}", retry=False) from e
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise SinkError(f"{argv[0]} exited {done.returncode}: {tail[0]}")


def build(cfg: SinkConfig, log: Callable[[str], None]) -> Sink:
    if cfg.type == "log":
        return LogSink(cfg, log)
    return {"webhook": WebhookSink, "email": EmailSink, "command": CommandSink}[cfg.type](cfg)


@dataclass
class SinkStats:
    sent: int = 0
    failed: int = 0
    retries: int = 0
    dropped: int = 0
    last_error: str | None = None
    last_sent: float | None = None


class Dispatcher:
    """Delivers notifications to the named sinks, each in its own thread (the log at once)."""

    def __init__(
        self,
        configs: dict[str, SinkConfig],
        log: Callable[[str], None],
        on_delivery: Callable[[str, dict[str, Any], str | None], None] | None = None,
    ):
        self.log = log
        self.on_delivery = on_delivery
        self.sinks = {name: build(cfg, log) for name, cfg in configs.items()}
        self.stats = {name: SinkStats() for name in configs}
        self._queues: dict[str, queue.Queue[dict[str, Any] | None]] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        for name, sink in self.sinks.items():
            if isinstance(sink, LogSink):
                continue
            q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=QUEUE_MAX)
            self._queues[name] = q
            t = threading.Thread(
                target=self._run, args=(sink, q), name=f"para-sink-{name}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def send(self, note: dict[str, Any], names: list[str]) -> None:
        """Queue `note` for each sink named; never blocks."""
        for name in names:
            sink = self.sinks.get(name)
            if sink is None:
                continue
            if isinstance(sink, LogSink):
                self._deliver(sink, note)
                continue
            q = self._queues[name]
            while True:
                try:
                    q.put_nowait(note)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                        with self._lock:
                            self.stats[name].dropped += 1
                    except queue.Empty:
                        pass

    def _run(self, sink: Sink, q: queue.Queue[dict[str, Any] | None]) -> None:
        while True:
            note = q.get()
            if note is None:
                return
            self._deliver(sink, note)

    def _deliver(self, sink: Sink, note: dict[str, Any]) -> None:
        st = self.stats[sink.name]
        tries = 1 + int(sink.cfg.get("retries") or 0) if sink.cfg.type != "log" else 1
        delay = float(sink.cfg.get("backoff") or 1.0) if sink.cfg.type != "log" else 0.0
        error: str | None = None
        for attempt in range(tries):
            try:
                sink.send(note)
                error = None
                break
            except SinkError as e:
                error = str(e)
                if not e.retry or attempt == tries - 1 or self._stop.is_set():
                    break
            except Exception as e:  # a bug in a sink must not end its thread
                error = f"{type(e).__name__}: {e}"
                break
            with self._lock:
                st.retries += 1
            if self._stop.wait(min(delay, 300.0)):
                break
            delay *= 2
        with self._lock:
            if error is None:
                st.sent += 1
                st.last_sent = time.time()
            else:
                st.failed += 1
                st.last_error = error
        if error is not None:
            self.log(
                f"alert {note['id']} ({note['rule']}, {note['event']}) could not be sent to "
                f"{sink.name}: {error}"
            )
        if self.on_delivery is not None:
            self.on_delivery(sink.name, note, error)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {
                    **st.__dict__,
                    "queued": self._queues[name].qsize() if name in self._queues else 0,
                }
                for name, st in self.stats.items()
            }

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to `timeout` seconds, then give up retrying."""
        for q in self._queues.values():
            try:
                q.put(None, timeout=0.1)
            except queue.Full:
                pass
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for t in self._threads:
            t.join(5.0)
