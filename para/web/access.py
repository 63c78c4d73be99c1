"""Who is asking, and what they may see.

Identity, the way HPC portals get it:
- an authenticating reverse proxy (Apache with mod_auth_openidc as Open OnDemand runs it,
  nginx with auth_request, ...) puts the user name in a header; the header is believed only
  when the connection comes from one of the configured proxy addresses, and ignored (and
  logged) from anywhere else;
- or a reader token made by `para collector add-token NAME --reader`, sent as
  `Authorization: Bearer TOKEN` or entered once on the login page (then a signed cookie).

What they may see: sysadmins (named, or members of named Unix groups) everything; a user
their own jobs, and where the site says so the jobs of the accounts they charge and of the
members of named Unix groups they are in.  A job they may not see does not exist for them.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import ipaddress
import json
import pwd
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from para.errors import ParaError

SESSION_COOKIE = "para_session"
SESSION_S = 12 * 3600
# user names as schedulers and directories have them (no spaces, quotes or markup)
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")


@dataclass(frozen=True)
class Viewer:
    name: str
    admin: bool
    via: str  # proxy | token | session
    # the users and accounts whose jobs this viewer sees besides their own
    users: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()

    def sees_user(self, user: Any) -> bool:
        return self.admin or (user is not None and (user == self.name or user in self.users))


@dataclass
class Policy:
    admins: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()
    share_accounts: bool = False  # users see the jobs of the accounts they charge
    share_groups: frozenset[str] = frozenset()  # members of these groups see each other's
    trusted_proxies: tuple[Any, ...] = ()  # ip networks
    user_headers: tuple[str, ...] = ("x-forwarded-user",)
    _group_cache: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)

    def is_trusted_proxy(self, address: str | None) -> bool:
        if not address or not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_proxies)

    def group_members(self, group: str) -> frozenset[str]:
        """The members of a Unix group (listed, and those whose primary group it is); kept a
        minute, since NSS (LDAP, sssd) may be slow."""
        now = time.monotonic()
        hit = self._group_cache.get(group)
        if hit is not None and now - hit[0] < 60:
            return hit[1]
        try:
            g = grp.getgrnam(group)
        except KeyError:
            members: frozenset[str] = frozenset()
        else:
            names = set(g.gr_mem)
            try:
                names.update(p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid)
            except OSError:
                pass
            members = frozenset(names)
        self._group_cache[group] = (now, members)
        return members

    def viewer(self, name: str, via: str) -> Viewer:
        admin = name in self.admins or any(name in self.group_members(g) for g in self.admin_groups)
        users: set[str] = set()
        for g in self.share_groups:
            members = self.group_members(g)
            if name in members:
                users |= members
        users.discard(name)
        return Viewer(name, admin, via, frozenset(users))


def parse_networks(values: list[str] | tuple[str, ...]) -> tuple[Any, ...]:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as e:
            raise ParaError(
                f"invalid proxy address {v!r}: {e}",
                hint="give an address or a network, e.g. 127.0.0.1 or 10.0.0.0/24",
            ) from None
    return tuple(nets)


def check_user(name: str) -> str | None:
    """The user name a proxy sent, if it is one (anything else is refused, not cleaned)."""
    name = name.strip()
    return name if _USER_RE.match(name) else None


class Sessions:
    """Signed cookies `name|expiry|mac`: HMAC-SHA256 with a key made at start (a restart
    signs everyone out, and nothing secret is kept on disk)."""

    def __init__(self, key: bytes | None = None, lifetime_s: float = SESSION_S):
        self.key = key or secrets.token_bytes(32)
        self.lifetime_s = lifetime_s

    def _mac(self, payload: bytes) -> str:
        return (
            base64.urlsafe_b64encode(hmac.new(self.key, payload, hashlib.sha256).digest())
            .decode()
            .rstrip("=")
        )

    def make(self, name: str, now: float | None = None) -> str:
        exp = int((now or time.time()) + self.lifetime_s)
        payload = base64.urlsafe_b64encode(json.dumps([name, exp]).encode()).decode()
        return f"{payload}.{self._mac(payload.encode())}"

    def read(self, cookie: str | None, now: float | None = None) -> str | None:
        if not cookie or "." not in cookie:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(payload.encode())):
            return None
        try:
            name, exp = json.loads(base64.urlsafe_b64decode(payload.encode()))
        except (ValueError, TypeError):
            return None
        if not isinstance(name, str) or not isinstance(exp, int) or exp < (now or time.time()):
            return None
        return name
