"""The behaviour store: each user's recent behaviours and profile in Redis.

Reads for /score are one pipelined round trip (history + profile) with a short timeout. When Redis
is slow or down the read returns ``None`` and the caller scores degraded. Every call goes through a
circuit breaker (``service.breaker``), so while Redis is down requests do not each pay a timeout.
Writes are atomic per request (MULTI/EXEC) and raise ``StoreUnavailable`` instead of pretending to
succeed, also at once while the circuit is open.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from service.breaker import CircuitBreaker
from service.errors import StoreUnavailable
from service.ids import RawId
from service.keys import Keys, decode_history, decode_value, encode_feedback, encode_profile, encode_value

log = logging.getLogger(__name__)


@dataclass
class UserState:
    history: list[dict[str, Any]]  # behaviour records, oldest first
    profile: dict[str, Any]


class BehaviorStore:
    def __init__(
        self,
        client: aioredis.Redis,
        writer: aioredis.Redis,
        keys: Keys,
        cap: int,
        ttl_seconds: int,
        breaker: CircuitBreaker,
        stream_maxlen: int = 1_000_000,
    ):
        self.client, self.writer, self.keys, self.cap, self.ttl = client, writer, keys, cap, ttl_seconds
        self.breaker, self.stream_maxlen = breaker, stream_maxlen

    async def read(self, user_id: RawId, limit: int, with_profile: bool = True) -> UserState | None:
        """The user's newest ``limit`` behaviours (at most the cap) and profile, or None when Redis
        cannot answer in time (the caller degrades). Only what the model will use is fetched."""
        if not self.breaker.allow():
            return None
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.lrange(self.keys.history(user_id), -min(limit, self.cap), -1)
                if with_profile:
                    pipe.hgetall(self.keys.profile(user_id))
                replies = await pipe.execute()
        except (RedisError, OSError) as e:
            self.breaker.failure()
            log.warning("redis read failed (%s); scoring degraded", e)
            await _drop_idle_if_gone(self.client, e)
            return None
        self.breaker.success()
        history = decode_history(replies[0])
        profile = {_text(k): decode_value(v) for k, v in replies[1].items()} if with_profile else {}
        return UserState(history, profile)

    async def append(
        self,
        events_by_user: Mapping[RawId, Sequence[dict[str, Any]]],
        clicks: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Appends each user's events in order and trims to the cap, and adds the click records to
        the click stream, all in one transaction."""
        async with self._write() as pipe:
            for user_id, events in events_by_user.items():
                key = self.keys.history(user_id)
                pipe.rpush(key, *map(encode_value, events))
                pipe.ltrim(key, -self.cap, -1)
                if self.ttl:
                    pipe.expire(key, self.ttl)
            for click in clicks:
                pipe.xadd(
                    self.keys.clicks(),
                    {"r": encode_feedback(click)},
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )

    async def upsert_profile(self, user_id: RawId, fields: Mapping[str, RawId]) -> None:
        async with self._write() as pipe:
            pipe.hset(self.keys.profile(user_id), mapping=encode_profile(fields))
            if self.ttl:
                pipe.expire(self.keys.profile(user_id), self.ttl)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Pipeline]:
        """A MULTI/EXEC pipeline the caller fills; executed on exit. Either all of it is written or
        StoreUnavailable is raised, also at once while the circuit is open."""
        unavailable = "the behaviour store is unavailable; nothing was written"
        if not self.breaker.allow():
            raise StoreUnavailable(unavailable)
        try:
            async with self.writer.pipeline(transaction=True) as pipe:
                yield pipe
                await pipe.execute()
        except (RedisError, OSError) as e:
            self.breaker.failure()
            log.warning("redis write failed: %s", e)
            await _drop_idle_if_gone(self.writer, e)
            raise StoreUnavailable(unavailable) from e
        self.breaker.success()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False


async def _drop_idle_if_gone(client: aioredis.Redis, error: BaseException) -> None:
    """After a lost connection, closes the pool's idle connections too: they point at the same
    dead server, and the pool's own check does not notice a peer that closed (without
    this, the first requests after Redis came back took stale connections, failed, and reopened
    the circuit for seconds)."""
    lost = isinstance(error, OSError) and not isinstance(error, TimeoutError)  # a timeout is no proof
    if isinstance(error, RedisConnectionError) or lost:
        try:
            await client.connection_pool.disconnect(inuse_connections=False)
        except (RedisError, OSError) as e:
            log.warning("closing idle redis connections failed: %s", e)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
