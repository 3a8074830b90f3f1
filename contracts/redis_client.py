"""Redis connections from one URL, for the service, the exporter and every script: a single server
(``redis://``, ``rediss://``, ``unix://``) or a Redis Cluster (``redis+cluster://host:port``, more
seed nodes after commas: ``redis+cluster://a:7000,b:7000``; ``rediss+cluster://`` for TLS).

A cluster changes the key layout (``contracts.keys.Keys``: hash tags, sharded streams), so the
``Keys`` for a URL come from here too. The cluster client is redis-py's ``RedisCluster``, which
follows MOVED/ASK, refreshes its slot map after a failover and retries a command on the new
owner. Its per-node connection list raises ``MaxConnectionsError`` when full instead of waiting;
``Gate`` makes callers wait for a free slot instead, as a BlockingConnectionPool does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode
from redis.exceptions import RedisError
from redis.retry import Retry

from contracts.keys import Keys

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SINGLE_SCHEMES = {"redis", "rediss", "unix"}
MAX_CONNECTIONS = 64  # per client (and per node in a cluster)
# What a call through redis-py raises when Redis or the connection to it fails: its own errors, the
# socket's, and, for a transport closed under a call (Redis killed mid-request, uvloop),
# RuntimeError ("the handler is closed") or AttributeError (a writer already set to None).
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, OSError, RuntimeError, AttributeError)

AsyncClient = aioredis.Redis | aioredis.RedisCluster
SyncClient = redis.Redis | redis.RedisCluster


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def check_url(url: str) -> str:
    """The URL, or ValueError saying what is wrong with it (the settings' and CLIs' check)."""
    parts = urlsplit(url)
    if parts.scheme not in SINGLE_SCHEMES | set(CLUSTER_SCHEMES):
        schemes = ", ".join(sorted(SINGLE_SCHEMES | set(CLUSTER_SCHEMES)))
        raise ValueError(f"a Redis URL starts with one of {schemes}://")
    if parts.scheme in CLUSTER_SCHEMES:
        _seed_nodes(url)
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0")
    return url


def _seed_nodes(url: str) -> list[tuple[str, int]]:
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("a Redis Cluster URL names its seed nodes as host:port[,host:port...]")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _cluster_options(url: str) -> dict[str, Any]:
    """TLS and credentials of a cluster URL, as RedisCluster (sync or async) takes them."""
    options: dict[str, Any] = {"ssl": CLUSTER_SCHEMES[urlsplit(url).scheme] == "rediss"}
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    if userinfo:
        user, _, password = userinfo.partition(":")
        options |= {"username": unquote(user) or None, "password": unquote(password) or None}
    return options


def keys_for(url: str, prefix: str) -> Keys:
    """The key layout the service uses with this URL and DIN_KEY_PREFIX."""
    return Keys(prefix, cluster=is_cluster(url))


def async_client(url: str, timeout_seconds: float, retries: int = 0) -> AsyncClient:
    """The service's client. ``retries`` 0 (the scoring path and the log): a slow Redis costs a
    call one timeout, not several. A cluster client follows MOVED and ASK whatever ``retries`` says;
    after a connection error or CLUSTERDOWN it refreshes its slot map and retries, with backoff, that
    many times (the writes', so that one rides out a failover). Only transactions retry that way:
    redis-py's plain cluster pipeline retries by closing the whole client and sleeping, so a client
    with retries is given MULTI/EXEC pipelines alone."""
    kw: dict[str, Any] = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    retry = (
        AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries) if retries else AsyncRetry(NoBackoff(), 0)
    )
    if is_cluster(url):
        return aioredis.RedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in _seed_nodes(url)],
            max_connections=MAX_CONNECTIONS,
            retry=retry,
            **_cluster_options(url),
            **kw,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_seconds,  # waiting for a free connection counts against the same budget
        **kw,
    )
    return aioredis.Redis(connection_pool=pool, retry=retry)


def sync_client(url: str, timeout_seconds: float | None = 10) -> SyncClient:
    """A blocking client for the exporter and the scripts; it retries a few times with backoff, so
    a failover or a restart in the middle of a long job costs a pause, not the job."""
    check_url(url)
    retry = Retry(ExponentialBackoff(cap=1, base=0.05), 5)
    if is_cluster(url):
        return redis.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in _seed_nodes(url)],
            socket_timeout=timeout_seconds,
            retry=retry,
            **_cluster_options(url),
        )
    return redis.Redis.from_url(url, socket_timeout=timeout_seconds, retry=retry)


async def close(client: AsyncClient) -> None:
    await client.aclose()
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.disconnect()


class Gate:
    """At most ``limit`` calls in flight on a client; more wait (inside the caller's own timeout)
    instead of failing. ``limit`` None: no gate (a single server's BlockingConnectionPool already
    waits), and ``slot`` costs the /score path nothing."""

    def __init__(self, limit: int | None):
        self._free = asyncio.Semaphore(limit) if limit is not None else None

    def slot(self, timeout_seconds: float) -> AbstractAsyncContextManager[None]:
        return self._slot(timeout_seconds) if self._free is not None else _OPEN

    @asynccontextmanager
    async def _slot(self, timeout_seconds: float) -> AsyncIterator[None]:
        assert self._free is not None
        async with asyncio.timeout(timeout_seconds):
            await self._free.acquire()
        try:
            yield
        finally:
            self._free.release()


_OPEN: AbstractAsyncContextManager[None] = nullcontext()
