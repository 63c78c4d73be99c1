"""The wire protocol between `para agent` (its shipper) and `para collector serve`.

Transport: Arrow Flight over gRPC, TLS unless the collector runs with `--insecure`.

- A segment travels as the `.para` file itself (already compressed to ~0.3 bytes a value, 10-30x
  smaller than the same rows as Arrow IPC): a Flight `DoPut` whose descriptor is a command
  holding a JSON `PutHeader`, followed by record batches of one `binary` column, the file's bytes
  in order.  The collector answers with one JSON `Ack` on the DoPut metadata stream, sent only
  after the segment is on its disk (fsync'd) and in its ledger.  Acks say `stored`,
  `duplicate` (the segment id was received before: a retry never duplicates data) or
  `rejected` (the segment can never be accepted: it stays out of the database and the shipper
  sets it aside).  A failure to store for now (disk full, shutting down) is a Flight
  UNAVAILABLE error: the shipper keeps the segment and retries.
- Live samples travel as a Flight action `live` whose body is `encode_live()`'s output.
- Readers (analysts' credentials) may call the actions `status`, `live-snapshot`, `top` (the
  cluster's latest values, jobs, alerts and recent history, for `para top`) and `alerts`.

Everything a peer sends that ends up in a path (host names, segment ids, table names, cluster
names) is checked here, by whitelist, before any use.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass
from typing import Any

from para.errors import ParaError

PROTOCOL_VERSION = 1

# Flight operations
OP_SEGMENT = "segment"
ACTION_LIVE = "live"
ACTION_STATUS = "status"
ACTION_LIVE_SNAPSHOT = "live-snapshot"
# issue 6, readers: what `para top --collector` shows, and the alerts firing now
ACTION_TOP = "top"
ACTION_ALERTS = "alerts"

# Ack states
STORED = "stored"
DUPLICATE = "duplicate"
REJECTED = "rejected"

# What an agent or a reader is
ROLE_AGENT = "agent"
ROLE_READER = "reader"
# A client certificate whose common name starts with this is an analyst's (read-only).
READER_CN_PREFIX = "para-reader:"

CHUNK_COLUMN = "chunk"
DEFAULT_PORT = 8815

# A DNS label, or a short-name with underscores as some clusters use; dots only between labels.
# Checked with fullmatch: `$` alone lets a trailing newline through.
_HOST_RE = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}))*$"
)
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_CLUSTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SEGMENT_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,250}\.para$")
_READER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")


class WireError(ParaError):
    """Something a peer sent that breaks the protocol (the message says what and where)."""


def check_host(host: object, what: str = "host name") -> str:
    """A host name safe to use as a path component (no `/`, no `..`, no leading dot)."""
    if not isinstance(host, str) or len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise WireError(
            f"invalid {what} {host!r}: letters, digits, '-', '_' and dot-separated labels only",
            hint="para uses the host name in file names; rename the node or set agent.host",
        )
    return host


def check_segment_id(seg_id: object) -> str:
    if not isinstance(seg_id, str) or not _ID_RE.fullmatch(seg_id):
        raise WireError(f"invalid segment id {seg_id!r}: expected 32 lowercase hex digits")
    return seg_id


def check_table_name(name: object) -> str:
    """Table names come from a file's catalogue and become directory and view names."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise WireError(
            f"invalid table name {name!r}: lowercase letters, digits and '_', "
            "starting with a letter"
        )
    return name


def check_cluster(name: object) -> str:
    if not isinstance(name, str) or not _CLUSTER_RE.fullmatch(name) or ".." in name:
        raise WireError(f"invalid cluster name {name!r}: letters, digits, '-', '_', '.' only")
    return name


def check_segment_file(name: object) -> str:
    if not isinstance(name, str) or not _SEGMENT_FILE_RE.fullmatch(name) or ".." in name:
        raise WireError(f"invalid segment file name {name!r}")
    return name


def check_reader_name(name: object) -> str:
    if not isinstance(name, str) or not _READER_RE.fullmatch(name):
        raise WireError(f"invalid reader name {name!r}: letters, digits, '-', '_', '.', '@' only")
    return name


def segment_id_for(meta: dict[str, Any], sha256_hex: str) -> str:
    """The idempotency key of a file: the agent's segment id, else (a `para profile` output)
    the first 32 hex digits of the SHA-256 of its bytes, so importing a file twice is a no-op."""
    seg = meta.get("segment")
    if isinstance(seg, dict) and "id" in seg:
        return check_segment_id(seg["id"])
    return sha256_hex[:32]


def host_of(meta: dict[str, Any]) -> str:
    """The host a file's data belongs to: its segment's host, else the recorded hostname."""
    seg = meta.get("segment")
    if isinstance(seg, dict) and seg.get("host"):
        return check_host(seg["host"], "segment host")
    host = (meta.get("host") or {}).get("hostname")
    return check_host(host, "recorded hostname")


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PutHeader:
    """Descriptor of one segment upload."""

    host: str
    id: str
    name: str  # the file name in the agent's spool (for messages; never used as a path)
    size: int
    sha256: str
    v: int = PROTOCOL_VERSION
    op: str = OP_SEGMENT

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> PutHeader:
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise WireError(f"upload descriptor is not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise WireError("upload descriptor is not a JSON object")
        v = doc.get("v")
        if v != PROTOCOL_VERSION:
            raise WireError(
                f"protocol version {v!r} is not supported "
                f"(this collector speaks {PROTOCOL_VERSION})",
                hint="run the same para version on agents and collector",
            )
        if doc.get("op") != OP_SEGMENT:
            raise WireError(f"unknown upload operation {doc.get('op')!r}")
        size = doc.get("size")
        digest = doc.get("sha256")
        if not isinstance(size, int) or size < 0:
            raise WireError(f"invalid segment size {size!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise WireError("invalid sha256 in the upload descriptor")
        return cls(
            host=check_host(doc.get("host")),
            id=check_segment_id(doc.get("id")),
            name=check_segment_file(doc.get("name")),
            size=size,
            sha256=digest,
        )


@dataclass(frozen=True)
class Ack:
    status: str  # stored | duplicate | rejected
    id: str
    reason: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Ack:
        try:
            doc = json.loads(data)
            status, seg_id = doc["status"], doc["id"]
        except (ValueError, KeyError, TypeError) as e:
            raise WireError(
                f"collector answered with an unreadable acknowledgement ({e})"
            ) from None
        if status not in (STORED, DUPLICATE, REJECTED):
            raise WireError(f"collector answered with an unknown status {status!r}")
        return cls(status, seg_id, str(doc.get("reason", "")))


def encode_live(host: str, samples: list[tuple[int, dict[str, Any]]]) -> bytes:
    """Live samples (t_ms, rows per table in the journal's layout) of one host."""
    doc = {"v": PROTOCOL_VERSION, "host": host, "samples": samples}
    return zlib.compress(json.dumps(doc, separators=(",", ":"), default=str).encode(), 1)


# A live message's bound, decompressed (docs/collector.md, "Bounds"): a second's sample of a
# busy node is tens of KiB; an agent that could not send for a while sends its backlog at once.
LIVE_MESSAGE_MAX = 8 << 20
# One DoPut message (a record batch of an upload's chunks) on the wire: agents send 4 MiB.
PUT_MESSAGE_MAX = 16 << 20


def decode_live(
    data: bytes, max_bytes: int = LIVE_MESSAGE_MAX
) -> tuple[str, list[tuple[int, Any]]]:
    host, samples, _ = decode_live_sized(data, max_bytes)
    return host, samples


def decode_live_sized(
    data: bytes, max_bytes: int = LIVE_MESSAGE_MAX
) -> tuple[str, list[tuple[int, Any]], int]:
    """(host, samples, bytes of JSON they decoded from); refuses more than `max_bytes`."""
    if len(data) > max_bytes:
        raise WireError(f"live message of {len(data)} bytes: more than the {max_bytes} allowed")
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, max_bytes + 1)
        if len(raw) > max_bytes or d.unconsumed_tail:
            raise WireError(f"live message decompresses to more than the {max_bytes} bytes allowed")
        doc = json.loads(raw)
        host = check_host(doc["host"])
        samples = [(int(t), rows) for t, rows in doc["samples"]]
    except WireError:
        raise
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise WireError(f"live message is not readable ({type(e).__name__}: {e})") from None
    if doc.get("v") != PROTOCOL_VERSION:
        raise WireError(f"live message in protocol version {doc.get('v')!r}")
    return host, samples, len(raw)
