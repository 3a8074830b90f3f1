"""The behaviour store: each user's recent behaviours and profile in Redis.

Reads for /score are one pipelined round trip (history + profile) with a short timeout. When Redis
is slow or down the read returns ``None`` and the caller scores degraded. Reads and writes each go
through a circuit breaker (``service.breaker``), so while Redis is down requests do not each pay a
timeout.

Writes raise ``StoreUnavailable`` instead of pretending to succeed, also at once while the circuit is
open. On one server a request's writes are one MULTI/EXEC: all or nothing. On a Redis Cluster a
transaction cannot span slots, so the users of a request are grouped by slot, each group is its own
MULTI/EXEC on its node (a user's append is atomic), the groups run concurrently, and the click records
go first, to their shards: a request that fails part-way may have written some users, never half of
one, and a click record without its behaviour only repeats a label when the client retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.ids import RawId
from contracts.keys import Keys, decode_history, decode_value, encode_feedback, encode_profile, encode_value
from contracts.redis_client import MAX_CONNECTIONS, REDIS_FAILURES, AsyncClient, Gate
from service.breaker import CircuitBreaker
from service.errors import StoreUnavailable
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class UserState:
    history: list[dict[str, Any]]  # behaviour records, oldest first
    profile: dict[str, Any]


class BehaviorStore:
    def __init__(
        self,
        client: AsyncClient,
        writer: AsyncClient,
        keys: Keys,
        breaker: CircuitBreaker,
        settings: Settings,
    ):
        """``client`` reads (short timeouts, no retries), ``writer`` writes; the history cap and TTL,
        the click stream's length and the timeouts are the settings'."""
        self.client, self.writer, self.keys = client, writer, keys
        self.cap, self.ttl = settings.history_cap, settings.history_ttl_seconds
        self.breaker, self.write_breaker = breaker, breaker.twin()
        self.stream_maxlen = max(1, settings.impression_stream_maxlen // len(keys.clicks()))
        self.read_timeout = settings.redis_timeout_ms / 1000
        self.write_timeout = settings.redis_write_timeout_ms / 1000
        limit = MAX_CONNECTIONS if keys.cluster else None  # only the cluster client raises when full
        self.read_gate, self.write_gate = Gate(limit), Gate(limit)

    async def read(self, user_id: RawId, limit: int, with_profile: bool = True) -> UserState | None:
        """The user's newest ``limit`` behaviours (at most the cap) and profile, or None when Redis
        cannot answer in time (the caller degrades). Only what the model will use is fetched."""
        if not self.breaker.allow():
            return None
        try:
            # Both keys share the user's hash slot: one round trip to one node, on a cluster too.
            async with (
                self.read_gate.slot(self.read_timeout),
                self.client.pipeline(transaction=False) as pipe,
            ):
                pipe.lrange(self.keys.history(user_id), -min(limit, self.cap), -1)
                if with_profile:
                    pipe.hgetall(self.keys.profile(user_id))
                replies = await pipe.execute()
        except REDIS_FAILURES as e:
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
        the click stream: one transaction on one server, one per hash slot on a cluster."""

        def append_users(pipe: Pipeline | ClusterPipeline, users: Sequence[RawId]) -> None:
            for user_id in users:
                key = self.keys.history(user_id)
                pipe.rpush(key, *map(encode_value, events_by_user[user_id]))
                pipe.ltrim(key, -self.cap, -1)
                if self.ttl:
                    pipe.expire(key, self.ttl)

        def add_clicks(
            pipe: Pipeline | ClusterPipeline, stream: str, records: Sequence[Mapping[str, Any]]
        ) -> None:
            for click in records:
                pipe.xadd(stream, {"r": encode_feedback(click)}, maxlen=self.stream_maxlen, approximate=True)

        if not self.keys.cluster:
            async with self._write() as pipe:
                append_users(pipe, list(events_by_user))
                add_clicks(pipe, self.keys.clicks()[0], clicks)
            return
        by_stream: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for click in clicks:
            by_stream[self.keys.clicks()[self.keys.user_shard(click["user_id"])]].append(click)
        by_slot: dict[int, list[RawId]] = defaultdict(list)
        for user_id in events_by_user:
            by_slot[key_slot(self.keys.history(user_id).encode())].append(user_id)

        async def clicks_to(stream: str, records: list[Mapping[str, Any]]) -> None:
            async with self._write() as pipe:  # a shard is one slot
                add_clicks(pipe, stream, records)

        async def one_slot(users: list[RawId]) -> None:
            async with self._write() as pipe:
                append_users(pipe, users)

        for writes in ([clicks_to(*kv) for kv in by_stream.items()], [one_slot(u) for u in by_slot.values()]):
            failed = [
                r
                for r in await asyncio.gather(*writes, return_exceptions=True)
                if isinstance(r, BaseException)
            ]
            if failed:
                raise failed[0]

    async def upsert_profile(self, user_id: RawId, fields: Mapping[str, RawId]) -> None:
        async with self._write() as pipe:
            pipe.hset(self.keys.profile(user_id), mapping=encode_profile(fields))
            if self.ttl:
                pipe.expire(self.keys.profile(user_id), self.ttl)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Pipeline | ClusterPipeline]:
        """A MULTI/EXEC pipeline the caller fills (on a cluster, with keys of one slot); executed on
        exit. Either all of it is written or StoreUnavailable is raised, also at once while the
        circuit is open."""
        unavailable = (
            "the behaviour store is unavailable; each user's events were written whole or not at all"
            if self.keys.cluster
            else "the behaviour store is unavailable; nothing was written"
        )
        if not self.write_breaker.allow():
            raise StoreUnavailable(unavailable)
        try:
            async with (
                self.write_gate.slot(self.write_timeout),
                self.writer.pipeline(transaction=True) as pipe,
            ):
                yield pipe
                await pipe.execute()
        except REDIS_FAILURES as e:
            self.write_breaker.failure()
            log.warning("redis write failed: %s", e)
            await _drop_idle_if_gone(self.writer, e)
            raise StoreUnavailable(unavailable) from e
        self.write_breaker.success()

    async def dead_letter_counts(self) -> dict[str, int] | None:
        """How many feedback records the exporter set aside, by kind (``jobs.feedback``); None
        when Redis does not answer."""
        try:
            raw = await self.client.hgetall(self.keys.dead_letter_counts())
        except REDIS_FAILURES:
            return None
        return {_text(k): int(v) for k, v in raw.items()}

    async def ping(self) -> bool:
        """Whether Redis answers. On a cluster, any one node: a master failing over makes only its
        users' reads degrade, not the whole instance unready."""
        try:
            if isinstance(self.client, aioredis.RedisCluster):
                return bool(await self.client.ping(target_nodes=aioredis.RedisCluster.RANDOM))
            return bool(await self.client.ping())
        except REDIS_FAILURES:
            return False


async def _drop_idle_if_gone(client: AsyncClient, error: BaseException) -> None:
    """After a lost connection, closes the pool's idle connections too: they point at the same
    dead server, and the pool's own check does not notice a peer that closed (without
    this, the first requests after Redis came back took stale connections, failed, and reopened
    the circuit for seconds)."""
    if not isinstance(client, aioredis.Redis):
        return  # a cluster client reconnects the failed node's connections itself
    lost = isinstance(error, OSError) and not isinstance(error, TimeoutError)  # a timeout is no proof
    if isinstance(error, RedisConnectionError | RuntimeError | AttributeError) or lost:
        try:
            await client.connection_pool.disconnect(inuse_connections=False)
        except REDIS_FAILURES as e:
            log.warning("closing idle redis connections failed: %s", e)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
