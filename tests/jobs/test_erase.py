"""Erasure end to end, on one Redis and on a Redis Cluster: traffic, clicks and two exports for 50
users; 5 of them erased (admin route and CLI); then every Redis key, every stream entry and every
exported file is read back: nothing of the 5, all of the other 45, and a retrain on the rewritten
logs runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from contracts.erasure import erase_users, tombstone
from contracts.exported import read_commits
from contracts.keys import encode_feedback, user_part
from contracts.redis_client import SyncClient, keys_for, sync_client
from jobs import erase as erase_cli
from jobs.feedback import Exporter
from model.config import DINConfig, TrainConfig
from model.train import run
from service.main import create_app
from tests.service.conftest import changed

pytestmark = pytest.mark.slow

TOKEN = "erase-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Integer and string ids, and a string that reads like an integer: "7" and 7 are different users.
USERS: list[Any] = [*range(1, 41), *(f"user-{i}" for i in range(8)), "7", "ä-ü"]
ERASED: list[Any] = [3, 17, "user-2", "7", "ä-ü"]
KEPT = [u for u in USERS if u not in ERASED]


def traffic(client: TestClient, rounds: int, seed: int) -> None:
    """Each user: behaviours and a profile written, two /score answers, a click on one item."""
    for k, user in enumerate(USERS):
        items = [{"item_id": (k * 7 + j + seed) % 90 + 1, "category_id": j % 5} for j in range(10)]
        events = [{"user_id": user, **items[j]} for j in range(3)]
        assert client.post("/events", json={"events": events}).status_code == 200
        assert (
            client.post("/profile", json={"user_id": user, "profile": {"age": 20 + k % 30}}).status_code
            == 204
        )
        for _ in range(rounds):
            r = client.post("/score", json={"user_id": user, "candidates": items})
            assert r.status_code == 200
            top = r.json()["items"][k % 3]
            click = {"user_id": user, "item_id": top["item_id"], "category_id": top["category_id"],
                     "request_id": r.json()["request_id"]}  # fmt: skip
            assert client.post("/events", json={"events": [click]}).status_code == 200


def flush(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    client.portal.call(services.impressions.flush)  # type: ignore[union-attr]


def every_record(client: SyncClient, prefix: str) -> tuple[list[str], list[bytes]]:
    """Every key under the prefix, and the raw value of every stream entry and list element."""
    r: Any = client
    names: list[str] = []
    values: list[bytes] = []
    for raw in r.scan_iter(match=f"{prefix}*"):
        key = raw.decode()
        names.append(key)
        kind = r.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "stream":
            values += [v for _, fields in r.xrange(key) for v in fields.values()]
        elif kind == "list":
            values += r.lrange(key, 0, -1)
        elif kind == "hash":
            values += [k + b"=" + v for k, v in r.hgetall(key).items()]
    return names, values


def users_in(out: Path) -> list[Any]:
    rows = []
    for batch in read_commits(out):
        for name in batch["files"]:
            rows += pq.read_table(out / name, columns=["user_id"])["user_id"].to_pylist()
    return rows


def rows_by_user(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for u in users_in(out):
        counts[user_part(u)] = counts.get(user_part(u), 0) + 1
    return counts


@pytest.fixture(params=["single", "cluster"])
def stack(request, settings, tmp_path):
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        settings = changed(settings, redis_url=cluster.url)
    s = changed(settings, admin_token=TOKEN, impression_flush_ms=10)
    r = sync_client(s.redis_url)
    try:
        yield request.param, s, r
    finally:
        r.close()


def test_erasing_5_of_50_users_leaves_nothing_of_them_anywhere_and_all_of_the_others(stack, tmp_path):
    mode, settings, r = stack
    keys = keys_for(settings.redis_url, settings.key_prefix)
    out = tmp_path / "logs"
    with TestClient(create_app(settings)) as client:
        traffic(client, rounds=2, seed=0)
        flush(client)
        first = Exporter(r, keys, out, window_seconds=0).export(now=time.time() + 120)
        traffic(client, rounds=2, seed=5)
        flush(client)
        second = Exporter(r, keys, out, window_seconds=0).export(now=time.time() + 120)
        assert first.impressions > 0 and second.impressions > 0
        before = rows_by_user(out)
        assert {user_part(u) for u in ERASED} <= set(before)
        clicks_before = sum(r.xlen(k) for k in keys.clicks())

        # The admin route erases four; the CLI the fifth (and rewrites the folder at once).
        reply = client.post("/admin/erase", json={"users": ERASED[:4]}, headers=AUTH)
        assert reply.status_code == 200, reply.text
        report = reply.json()
        assert report["users"] == 4 and report["tombstones"] == 4
        assert report["keys_deleted"] == {"history": 4, "profile": 4}
        assert report["stream_entries_deleted"]["clicks"] > 0

    argv = ["--user", json.dumps(ERASED[4]), "--out", str(out), "--redis-url", settings.redis_url,
            "--key-prefix", settings.key_prefix]  # fmt: skip
    assert erase_cli.main(argv) == 0
    # The first four's rows go at the export's next pass, which also drops a record of theirs that
    # reached a stream after the erasure (an answer still in a worker's buffer).
    late = {"request_id": "late", "ts": time.time(), "user_id": ERASED[0], "model_version": "v",
            "degraded": False, "fields": ["item_id", "category_id"], "history": [],
            "profile": {"age": 30, "gender": None}, "context": {"hour": 1, "weekday": 1},
            "candidates": [{"item_id": 1, "category_id": 1}], "ctr": [0.5]}  # fmt: skip
    r.xadd(keys.impressions()[0], {"r": encode_feedback(late)})
    third = Exporter(r, keys, out, window_seconds=0).export(now=time.time() + 120)
    assert third.erased >= 1 and third.rewritten > 0

    # Redis: no key and no stream entry of the five; their tombstones are digests, not ids.
    names, values = every_record(r, settings.key_prefix)
    parts = {user_part(u) for u in ERASED}
    for name in names:
        assert not any(name.endswith(f":{p}") or name.endswith(f":{{{p}}}") for p in parts), name
    for value in values:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and "user_id" in record:
            assert user_part(record["user_id"]) not in parts, record
    assert {tombstone(u).encode() for u in ERASED} <= set(r.hkeys(keys.erased()))
    assert sum(r.xlen(k) for k in keys.clicks()) < clicks_before

    # Exported files: none of the five, every row of the 45 others.
    after = rows_by_user(out)
    assert not parts & set(after)
    assert after == {p: n for p, n in before.items() if p not in parts}
    assert all(user_part(u) in after for u in KEPT)
    # and the files on disk are exactly the committed ones
    committed = {n for b in read_commits(out) for n in b["files"]}
    assert {p.relative_to(out).as_posix() for p in out.glob("*/*.parquet")} == committed
    assert sum(b["rows"] for b in read_commits(out)) == sum(after.values())

    # A retrain on the rewritten logs runs.
    result = run(DINConfig(), TrainConfig(data=str(out), out=str(tmp_path / "run"), epochs=1, progress=False,
                                           max_history=20))  # fmt: skip
    assert result["test"]["auc"] == result["test"]["auc"]  # a number, not NaN
    if mode == "single":
        # Erasing again changes nothing and reports nothing new.
        again = erase_users(r, keys, ERASED)
        assert again.tombstones == 0 and again.keys_deleted == {"history": 0, "profile": 0}
        assert sum(again.stream_entries_deleted.values()) == 0


def test_the_admin_route_needs_admin_rights_and_checks_the_ids(settings):
    with TestClient(create_app(changed(settings, admin_token=TOKEN))) as client:
        assert client.post("/admin/erase", json={"users": [1]}).status_code == 401
        r = client.post("/admin/erase", json={"users": []}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "users"]
        r = client.post("/admin/erase", json={"users": [1.5]}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "users"]
    with TestClient(create_app(settings)) as client:
        assert client.post("/admin/erase", json={"users": [1]}, headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("text", "expected"), [("42", 42), ('"42"', "42"), ("anna", "anna"), ('"ä"', "ä"), ("-3", -3)]
)
def test_the_cli_reads_integer_and_string_ids(text, expected):
    assert erase_cli.user_arg(text) == expected and type(erase_cli.user_arg(text)) is type(expected)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--user", "1", "--out", "/no/such/folder"], "--out /no/such/folder: no such folder"),
        (["--user", "x" * 300], "--user: not a user id"),
        (["--user", "1", "--redis-url", "http://nope"], "--redis-url"),
    ],
)
def test_the_cli_refuses_bad_arguments_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        erase_cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_export_removes_hours_past_the_retention_and_keeps_the_watermark(settings, tmp_path):
    keys = keys_for(settings.redis_url, settings.key_prefix)
    r = sync_client(settings.redis_url)
    out = tmp_path / "logs"
    now = time.time()
    try:
        for hours_ago in (100, 50, 1):
            at = now - hours_ago * 3600
            record = {"request_id": f"r{hours_ago}", "ts": at, "user_id": 1, "model_version": "v",
                      "degraded": False, "fields": ["item_id"], "history": [], "profile": {}, "context": {},
                      "candidates": [{"item_id": 1}, {"item_id": 2}], "ctr": [0.5, 0.4]}  # fmt: skip
            r.xadd(keys.impressions()[0], {"r": encode_feedback(record)}, id=f"{int(at * 1000)}-*")
        exporter = Exporter(r, keys, out, window_seconds=0, keep_days=3)
        summary = exporter.export(now=now)
        assert summary.impressions == 6 and summary.expired == 1  # 100 hours ago is past 3 days
        hours = sorted(p.name for p in out.iterdir() if p.is_dir())
        assert len(hours) == 2 and sorted(users_in(out)) == [1, 1, 1, 1]
        assert sum(b["rows"] for b in read_commits(out)) == 4
        assert exporter.watermark() != {k: "0-0" for k in keys.impressions()}
        assert Exporter(r, keys, out, window_seconds=0, keep_days=3).export(now=now).impressions == 0
    finally:
        r.close()
