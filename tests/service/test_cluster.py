"""The service, the exporter and the loader on a real Redis Cluster (3 masters, 3 replicas, local
processes): the key layout, one round trip per /score, writes grouped by slot, sharded logs."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from redis.crc import key_slot

from contracts.keys import STREAM_SHARDS, Keys, decode_history
from contracts.redis_client import keys_for, sync_client
from contracts.repository import ModelRepository
from devtools.liveserver import start_server, stop_server
from jobs.feedback import Exporter
from jobs.load_behaviors import main as load_main
from service.main import create_app
from tests.service.conftest import changed
from tests.service.test_score import post_events, score

pytestmark = pytest.mark.slow

CANDIDATES = [{"item_id": i, "category_id": i % 50} for i in range(0, 200, 9)]


@pytest.fixture
def cluster_settings(settings, redis_cluster):
    return changed(settings, redis_url=redis_cluster.url)


def owners(cluster, keys: list[str]) -> set[int]:
    """The ports of the masters that hold these keys."""
    r = sync_client(cluster.url)
    assert isinstance(r, redis.RedisCluster)
    try:
        return {r.get_node_from_key(k).port for k in keys}
    finally:
        r.close()


def command_calls(cluster, command: str) -> dict[int, int]:
    """Per master port, how often it ran ``command`` since the last CONFIG RESETSTAT."""
    out = {}
    for port in cluster.master_ports():
        stats = cluster.node(port).info("commandstats")
        out[port] = int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return out


def test_a_users_keys_share_one_slot_and_each_stream_is_spread_over_every_master(redis_cluster):
    keys = Keys("din:", cluster=True)
    for user in (42, "42", "a}b{c", "ünï"):
        assert key_slot(keys.history(user).encode()) == key_slot(keys.profile(user).encode())
    assert keys.history(42) != keys.history("42")
    for streams in (keys.impressions(), keys.clicks(), keys.shadow()):
        assert len(streams) == STREAM_SHARDS
        assert owners(redis_cluster, list(streams)) == set(redis_cluster.master_ports())
    assert Keys("din:").history(42) == "din:hist:42"  # one server keeps the names it always had
    with pytest.raises(ValueError, match="hash tag"):
        Keys("din:{x}:", cluster=True)


def test_a_prefix_with_braces_or_a_database_number_is_refused_for_a_cluster(cluster_settings):
    with pytest.raises(ValueError, match="hash tag"):
        changed(cluster_settings, key_prefix="a{b}:")
    with pytest.raises(ValueError, match="database 0"):
        changed(cluster_settings, redis_url=cluster_settings.redis_url + "/3")
    with pytest.raises(ValueError, match="seed nodes"):
        changed(cluster_settings, redis_url="redis+cluster://nohost")


def test_on_a_cluster_a_score_reads_history_and_profile_in_one_round_trip_to_the_users_node(
    cluster_settings, redis_cluster
):
    with TestClient(create_app(cluster_settings)) as c:
        post_events(c, "u-one", [(5, 5), (17, 17)])
        r = c.post("/profile", json={"user_id": "u-one", "profile": {"age": 30, "gender": "M"}})
        assert r.status_code == 204
        for port in redis_cluster.master_ports():
            redis_cluster.node(port).config_resetstat()
        body = score(c, "u-one", CANDIDATES, user=None)
    assert not body["degraded"]
    keys = keys_for(cluster_settings.redis_url, cluster_settings.key_prefix)
    (owner,) = owners(redis_cluster, [keys.history("u-one")])
    assert command_calls(redis_cluster, "lrange") == {
        p: int(p == owner) for p in redis_cluster.master_ports()
    }
    assert command_calls(redis_cluster, "hgetall") == {
        p: int(p == owner) for p in redis_cluster.master_ports()
    }


def test_scores_on_a_cluster_equal_scores_on_one_server_and_an_event_shows_up_in_the_next(
    settings, cluster_settings
):
    answers = []
    for s in (settings, cluster_settings):
        with TestClient(create_app(s)) as c:
            post_events(c, 7, [(3, 3), (40, 40), (9, 9)])
            before = score(c, 7, CANDIDATES)
            post_events(c, 7, [(18, 18)])
            after = score(c, 7, CANDIDATES)
        answers.append((before, after))
    for before, after in answers:
        assert not before["degraded"] and not after["degraded"]
        assert [i["ctr"] for i in before["items"]] != [i["ctr"] for i in after["items"]]
    for k in (0, 1):
        single = {i["item_id"]: i["ctr"] for i in answers[0][k]["items"]}
        cluster = {i["item_id"]: i["ctr"] for i in answers[1][k]["items"]}
        assert single.keys() == cluster.keys()
        np.testing.assert_allclose([cluster[i] for i in single], list(single.values()), atol=1e-6)


def test_one_events_request_for_users_on_every_master_appends_each_users_events_in_order(
    cluster_settings, redis_cluster
):
    users = [f"user-{u}" for u in range(60)]
    events = [
        {"user_id": u, "item_id": 100 * n + k, "category_id": k, "ts": 1000 + k}
        for k in range(3)
        for n, u in enumerate(users)
    ]
    with TestClient(create_app(cluster_settings)) as c:
        r = c.post("/events", json={"events": events})
        assert r.status_code == 200, r.text
    keys = keys_for(cluster_settings.redis_url, cluster_settings.key_prefix)
    assert owners(redis_cluster, [keys.history(u) for u in users]) == set(redis_cluster.master_ports())
    client = sync_client(cluster_settings.redis_url)
    try:
        for n, u in enumerate(users):
            assert [e["item_id"] for e in decode_history(client.lrange(keys.history(u), 0, -1))] == [
                100 * n + k for k in range(3)
            ]
    finally:
        client.close()


def stream_records(url: str, streams: tuple[str, ...], want: int, timeout: float = 30) -> dict[str, int]:
    """Entries per shard key, once there are ``want`` in all."""
    r = sync_client(url)
    deadline = time.time() + timeout
    try:
        while True:
            counts = {k: r.xlen(k) for k in streams}
            if sum(counts.values()) >= want or time.time() > deadline:
                return counts
            time.sleep(0.05)
    finally:
        r.close()


def test_impressions_are_spread_over_the_shards_and_the_exporter_writes_each_once_with_its_click(
    cluster_settings, tmp_path: Path
):
    n = 48
    clicked = {}
    with TestClient(create_app(cluster_settings)) as c:
        for k in range(n):
            body = score(c, f"v{k}", CANDIDATES[:5], request_id=f"req-{k}", top_k=3)
            if k % 3 == 0:
                clicked[f"req-{k}"] = item = body["items"][k % 3]["item_id"]
                event = {
                    "user_id": f"v{k}",
                    "item_id": item,
                    "category_id": item % 50,
                    "ts": 5000,
                    "request_id": f"req-{k}",
                }
                assert c.post("/events", json={"events": [event]}).status_code == 200
    keys = keys_for(cluster_settings.redis_url, cluster_settings.key_prefix)
    counts = stream_records(cluster_settings.redis_url, keys.impressions(), n)
    assert sum(counts.values()) == n
    assert sum(1 for v in counts.values() if v) == STREAM_SHARDS  # answers go to the shards in turn
    client = sync_client(cluster_settings.redis_url)
    try:
        exporter = Exporter(client, keys, tmp_path / "logs", window_seconds=0)
        assert exporter.export(now=time.time() + 120).impressions == 3 * n
        assert exporter.export(now=time.time() + 240).impressions == 0  # nothing twice
        pending = [client.xpending(k, "din-export")["pending"] for k in keys.impressions()]
    finally:
        client.close()
    assert pending == [0] * STREAM_SHARDS
    rows = pq.read_table(sorted((tmp_path / "logs").glob("*/*.parquet"))).to_pylist()
    assert len({(r["request_id"], r["item_id"]) for r in rows}) == len(rows) == 3 * n
    assert {r["request_id"]: r["item_id"] for r in rows if r["label"]} == clicked


def test_load_behaviors_fills_a_cluster_the_cluster_service_then_reads(cluster_settings, redis_cluster):
    prefix, url = cluster_settings.key_prefix, cluster_settings.redis_url
    load_main(
        ["--data", "synthetic", "--users", "40", "--redis-url", url, "--key-prefix", prefix, "--no-progress"]
    )
    keys = keys_for(url, prefix)
    client = sync_client(url)
    try:
        loaded = [
            k
            for port in redis_cluster.master_ports()
            for k in redis_cluster.node(port).scan_iter(f"{prefix}hist:*")
        ]
        assert len(loaded) == 40
        user = decode_history(client.lrange(loaded[0], -1, -1))
        assert user and "item_id" in user[0]
    finally:
        client.close()
    user_id = int(loaded[0].decode().split("{")[1].rstrip("}"))
    assert keys.history(user_id) == loaded[0].decode()
    with TestClient(create_app(cluster_settings)) as c:
        body = score(c, user_id, CANDIDATES, explain=True)
    assert not body["degraded"] and len(body["history"]) > 0


def test_a_shard_a_user_clicks_in_is_always_the_same_one():
    keys = Keys("p:", cluster=True)
    assert {keys.user_shard("u9") for _ in range(5)} == {keys.user_shard("u9")}
    assert len({keys.user_shard(u) for u in range(200)}) == STREAM_SHARDS


def test_a_cluster_client_follows_a_moved_slot(redis_cluster, cluster_settings):
    """After a failover the old master answers MOVED; the client refreshes its slots and goes on."""
    keys = keys_for(cluster_settings.redis_url, cluster_settings.key_prefix)
    with TestClient(create_app(cluster_settings)) as c:
        post_events(c, "mover", [(1, 1)])
        (owner,) = owners(redis_cluster, [keys.history("mover")])
        redis_cluster.failover(owner)
        post_events(c, "mover", [(2, 2)])
        body = score(c, "mover", CANDIDATES, explain=True)
    assert [b["item_id"] for b in body["history"]] == [1, 2]


def test_a_failover_of_every_master_under_load_answers_every_request_and_loses_no_acknowledged_event(
    trained, tmp_path, redis_cluster
):
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    prefix = f"test:{uuid.uuid4().hex}:"
    env = os.environ | {
        "DIN_MODELS": str(repo.root),
        "DIN_REDIS_URL": redis_cluster.url,
        "DIN_KEY_PREFIX": prefix,
        "DIN_HISTORY_CAP": "10000",
        "DIN_MAX_QUEUE_MS": "0",  # judged: every answer, not the machine's speed
    }
    server, url = start_server(env)
    statuses: dict[str, Counter[int]] = {"score": Counter(), "events": Counter()}
    degraded = Counter[bool]()
    acked: dict[str, list[int]] = {f"w{u}": [] for u in range(24)}
    stop = threading.Event()
    users = list(acked)

    def post(conn: http.client.HTTPConnection, path: str, body: object) -> tuple[int, bytes]:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()

    def scorer(seed: int) -> None:
        rng, conn = random.Random(seed), http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        while not stop.is_set():
            status, answer = post(conn, "/score", {"user_id": rng.choice(users), "candidates": CANDIDATES})
            statuses["score"][status] += 1
            if status == 200:
                degraded[json.loads(answer)["degraded"]] += 1
        conn.close()

    def writer(mine: list[str]) -> None:
        conn, n = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30), 0
        while not stop.is_set():
            n += 1
            events = [{"user_id": u, "item_id": n, "category_id": n % 50, "ts": n} for u in mine]
            status, _ = post(conn, "/events", {"events": events})
            statuses["events"][status] += 1
            if status == 200:
                for u in mine:
                    acked[u].append(n)
        conn.close()

    threads = [threading.Thread(target=scorer, args=(s,)) for s in range(3)]
    threads += [threading.Thread(target=writer, args=(users[k::3],)) for k in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(1)
        for master in redis_cluster.master_ports():
            redis_cluster.failover(master)
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        stop_server(server)
    keys = keys_for(redis_cluster.url, prefix)
    client = sync_client(redis_cluster.url)
    try:
        stored = {
            u: [e["item_id"] for e in decode_history(client.lrange(keys.history(u), 0, -1))] for u in users
        }
    finally:
        client.close()
    print(f"answers {dict(statuses['score'])}, degraded {dict(degraded)}, events {dict(statuses['events'])}")
    assert set(statuses["score"]) == {200} and set(statuses["events"]) == {200}
    assert all(acked[u] and stored[u] == acked[u] for u in users)


def test_an_instance_on_a_cluster_is_ready_and_its_readiness_asks_one_node(cluster_settings, redis_cluster):
    with TestClient(create_app(cluster_settings)) as c:
        for port in redis_cluster.master_ports():
            redis_cluster.node(port).config_resetstat()
        assert c.get("/readyz").status_code == 200
    assert sum(command_calls(redis_cluster, "ping").values()) <= 1  # replicas are not counted
