"""Who may call what: API keys (``contracts.api_keys``) checked before a request reaches a route,
and each key's rate of writes.

With keys configured, ``/score`` needs a key with the ``score`` scope (and ``explain`` to ask for
the stored history), ``/events`` and ``/profile`` the ``write`` scope, ``/admin/*`` the ``admin``
scope or ``DIN_ADMIN_TOKEN``. Missing or wrong: 401 with ``WWW-Authenticate``; valid but without
the scope: 403. Health, metrics, the docs and the UI's page stay open.

Without keys the service is for a trusted host only: ``python -m service`` refuses to bind anything
but loopback (``service.__main__``), and a request that arrives on another interface all the same
(uvicorn started by hand) is refused here, unless ``DIN_ALLOW_UNAUTHENTICATED`` says a gateway in
front authenticates.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from contracts.api_keys import KeyEntry, parse_entries, verify
from service.errors import Forbidden, InvalidInput, RateLimited, ServiceError, Unauthorized, send_error
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

# The scope each protected path needs (any method: a method the route lacks is refused after).
ROUTE_SCOPES = {"/score": "score", "/events": "write", "/profile": "write"}
RELOAD_EVERY = 1.0  # seconds between looks at the key file
MAX_TOKEN = 256  # longer bearer values are not keys; refused before hashing
STATE_KEY = "api_key"  # where the caller's entry lives in the ASGI scope's state
ANONYMOUS = "-"  # the caller's id on logs and limits when no keys are configured
KEY_ID: ContextVar[str] = ContextVar("din_key_id", default=ANONYMOUS)


class KeyRing:
    """The configured key entries: ``DIN_API_KEYS`` and the file ``DIN_API_KEYS_FILE``, the file
    re-read within ``RELOAD_EVERY`` seconds of a change. A file that no longer parses is logged and
    the keys it held stay valid; at start-up it is an error (``load`` raises)."""

    def __init__(self, inline: str | None, file: Path | None, clock: Callable[[], float] = time.monotonic):
        self.inline = parse_entries(inline) if inline else {}
        self.file, self.clock = file, clock
        self.from_file: dict[str, KeyEntry] = {}
        self.stamp: tuple[int, int, int] | None = None
        self.checked = -math.inf
        if file is not None:
            self.from_file, self.stamp = read_file(file)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        inline = settings.api_keys.get_secret_value() if settings.api_keys is not None else None
        return cls(inline, settings.api_keys_file)

    @property
    def enabled(self) -> bool:
        return bool(self.inline) or self.file is not None

    def entries(self) -> dict[str, KeyEntry]:
        if self.file is not None and self.clock() - self.checked >= RELOAD_EVERY:
            self.checked = self.clock()
            self._reload(self.file)
        return self.from_file | self.inline if self.inline else self.from_file

    def _reload(self, file: Path) -> None:
        try:
            if stamp_of(file) == self.stamp:
                return
            self.from_file, self.stamp = read_file(file)
            log.info("API keys re-read from %s: %d entries", file, len(self.from_file))
        except (OSError, ValueError) as e:
            log.warning("API key file %s not re-read, the previous keys stay valid: %s", file, e)


def stamp_of(file: Path) -> tuple[int, int, int]:
    st = os.stat(file)
    return st.st_mtime_ns, st.st_size, st.st_ino


def read_file(file: Path) -> tuple[dict[str, KeyEntry], tuple[int, int, int]]:
    stamp = stamp_of(file)
    return parse_entries(file.read_text(encoding="utf-8")), stamp


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of the one Authorization header; "" for anything else that was sent (a
    second header, another scheme, a value that is not a short ASCII token); None when absent."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1 or len(values[0]) > MAX_TOKEN + 7 or not values[0].isascii():
        return ""
    scheme, _, token = values[0].decode("ascii").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def arrived_from_network(scope: Scope) -> bool:
    """True when the request came in on an interface other than loopback. Only an IP address
    counts (a test client or a Unix socket names no interface)."""
    server = scope.get("server")
    if not server:
        return False
    try:
        return not ipaddress.ip_address(str(server[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Authentication:
    """Pure ASGI middleware: the key is checked before the body is read or admission counted."""

    def __init__(self, app: ASGIApp, ring: KeyRing, metrics: Metrics, allow_unauthenticated: bool):
        self.app, self.ring, self.metrics, self.allow = app, ring, metrics, allow_unauthenticated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        needed = ROUTE_SCOPES.get(scope["path"]) if scope["type"] == "http" else None
        if needed is None:
            await self.app(scope, receive, send)
            return
        if not self.ring.enabled:
            if not self.allow and arrived_from_network(scope):
                message = (
                    "no API keys are configured, so this service answers only on loopback; "
                    "set DIN_API_KEYS or DIN_API_KEYS_FILE"
                )
                await self.refuse(send, "no_keys", Forbidden(message, ("header", "authorization")))
                return
            await self.app(scope, receive, send)
            return
        entry, refusal = check(self.ring, scope["headers"], needed)
        if refusal is not None or entry is None:
            await self.refuse(send, *(refusal or ("invalid", Unauthorized("no key", ()))))
            return
        self.metrics.authenticated.labels(key=entry.id, scope=needed).inc()
        scope.setdefault("state", {})[STATE_KEY] = entry
        token = KEY_ID.set(entry.id)
        try:
            await self.app(scope, receive, send)
        finally:
            KEY_ID.reset(token)

    async def refuse(self, send: Send, reason: str, error: ServiceError) -> None:
        self.metrics.auth_refused.labels(reason=reason).inc()
        await send_error(send, error)


def check(
    ring: KeyRing, headers: list[tuple[bytes, bytes]], needed: str
) -> tuple[KeyEntry | None, tuple[str, ServiceError] | None]:
    """The caller's entry, or the refusal to answer with and its reason (counted on /metrics)."""
    token = bearer(headers)
    loc = ("header", "authorization")
    if token is None:
        return None, ("missing", Unauthorized("an API key is required: 'Authorization: Bearer <key>'", loc))
    entry = verify(ring.entries(), token) if 0 < len(token) <= MAX_TOKEN else None
    if entry is None:
        return None, (
            "invalid",
            Unauthorized("the API key is not valid (unknown, revoked or malformed)", loc),
        )
    if needed not in entry.scopes:
        return entry, ("scope", Forbidden(f"this API key lacks the '{needed}' scope", loc))
    return entry, None


def caller(scope: Scope) -> KeyEntry | None:
    """The key the request came with (None when no keys are configured)."""
    entry: KeyEntry | None = scope.get("state", {}).get(STATE_KEY)
    return entry


def caller_id(scope: Scope) -> str:
    """The id of the caller's key, ANONYMOUS when no keys are configured."""
    entry = caller(scope)
    return entry.id if entry is not None else ANONYMOUS


def require(scope: Scope, needed: str, loc: tuple[str, ...]) -> None:
    """A scope beyond the route's own (``explain`` on /score): 403 when the caller's key lacks it."""
    entry = caller(scope)
    if entry is not None and needed not in entry.scopes:
        raise Forbidden(f"this API key lacks the '{needed}' scope", loc)


class WriteLimit:
    """A token bucket per key: ``rate`` events a second, up to ``burst`` at once. Per worker
    process, so with N workers a key may write up to N times the rate."""

    def __init__(
        self, rate: float, burst: int, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ):
        self.rate, self.burst, self.metrics, self.clock = rate, burst, metrics, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: str, n: int, loc: tuple[str, ...]) -> None:
        if n > self.burst:
            raise InvalidInput(f"at most {self.burst} events per request (DIN_WRITE_BURST)", loc)
        now = self.clock()
        tokens, at = self.buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < n:
            self.buckets[key_id] = (tokens, now)
            self.metrics.rate_limited.labels(key=key_id).inc()
            wait = max(1, math.ceil((n - tokens) / self.rate))
            raise RateLimited(f"this API key writes past its rate of {self.rate:g} events/s", loc, wait)
        self.buckets[key_id] = (tokens - n, now)


class KeyOnAccessLog(logging.Filter):
    """Adds ``key=<id>`` (the caller's key id, never the key) after the client's address on
    uvicorn's access line, where the Common Log Format names the user:
    ``127.0.0.1:5000 key=web - "POST /score HTTP/1.1" 200``. The line's other fields stay as
    uvicorn's formatter expects them."""

    def filter(self, record: logging.LogRecord) -> bool:
        key_id = KEY_ID.get()
        if key_id != ANONYMOUS and isinstance(record.args, tuple) and record.args:
            record.args = (f"{record.args[0]} key={key_id}", *record.args[1:])
        return True
