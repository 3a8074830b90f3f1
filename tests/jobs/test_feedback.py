"""jobs.feedback export: impressions and clicks from the service's streams -> labelled Parquet,
exactly once, through crashes of the exporter and restarts of Redis."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient

from contracts.bundle import load_bundle
from contracts.keys import Keys, encode_feedback
from contracts.repository import ModelRepository
from devtools.stack import RedisServer
from jobs.feedback import COMMITS, Exporter, Summary
from jobs.gate import predict_bundle
from service.main import create_app
from service.settings import Settings
from tests.helpers import REDIS_URL, redis_prefix

WINDOW = 100.0
T0 = 1_700_000_000.0  # the served time of the first answer in the hand-made streams (2023)


@pytest.fixture
def streams() -> Iterator[tuple[redis.Redis, Keys]]:
    with redis_prefix() as prefix:
        r = redis.Redis.from_url(REDIS_URL)
        yield r, Keys(prefix)
        r.close()


def answer(r: redis.Redis, keys: Keys, at: float, request_id: str, user, items: list[int]) -> None:
    """One logged /score answer, added with the stream id of its time (as the service's flush would)."""
    record = {
        "request_id": request_id, "ts": at, "user_id": user, "model_version": "v1", "key_id": "web",
        "degraded": False,
        "fields": ["item_id", "category_id"],
        "history": [{"item_id": 1, "category_id": 1, "ts": 5}, {"item_id": 2, "category_id": 1, "ts": 6}],
        "profile": {"age": 30, "gender": "F"}, "context": {"hour": 3, "weekday": 1},
        "candidates": [{"item_id": i, "category_id": i % 3} for i in items],
        "ctr": [0.5 - k / 100 for k in range(len(items))],
    }  # fmt: skip
    r.xadd(keys.impressions()[0], {"r": encode_feedback(record)}, id=f"{int(at * 1000)}-*")


def click(r: redis.Redis, keys: Keys, at: float, user, item: int, request_id: str | None = None) -> None:
    record = {"user_id": user, "item_id": item, "ts": int(at), "at": at, "request_id": request_id}
    r.xadd(keys.clicks()[0], {"r": encode_feedback(record)})


def exported(out: Path) -> list[dict]:
    files = sorted(out.glob("*/part-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def done(summary: Summary) -> tuple[int, int, int]:
    return summary.impressions, summary.answers, summary.waiting


def labels(out: Path) -> dict[tuple[str, int], int]:
    rows = exported(out)
    got = {(row["request_id"], row["item_id"]): row["label"] for row in rows}
    assert len(got) == len(rows), "a (request_id, item_id) was exported twice"
    return got


def test_clicks_are_attributed_by_request_id_else_to_the_latest_impression_in_the_window(streams, tmp_path):
    r, keys = streams
    answer(r, keys, T0, "a", "u", [5, 6, 7])
    answer(r, keys, T0 + 10, "b", "u", [5, 8])
    answer(r, keys, T0 + 20, "c", "other", [6])
    click(r, keys, T0 + 15, "u", 6, request_id="a")  # named: answer a, though it is not the latest
    click(r, keys, T0 + 30, "u", 5)  # no id: the latest answer of u that showed 5 is b
    click(r, keys, T0 + 31, "u", 9)  # never shown: nobody's
    click(r, keys, T0 + 25 + WINDOW, "other", 6)  # 105 s after c showed it: past the window
    counts = Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 1000)
    assert (counts.impressions, counts.answers, counts.waiting) == (6, 3, 0)
    assert labels(tmp_path) == {
        ("a", 5): 0, ("a", 6): 1, ("a", 7): 0, ("b", 5): 1, ("b", 8): 0, ("c", 6): 0,
    }  # fmt: skip


def test_rows_have_the_sample_layout_and_the_served_extras(streams, tmp_path):
    r, keys = streams
    answer(r, keys, T0, "a", "u", [5, 6])
    Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 1000)
    (part,) = tmp_path.glob("*/part-*.parquet")
    assert part.parent.name == time.strftime("%Y-%m-%dT%H", time.gmtime(T0))
    row = exported(tmp_path)[1]
    assert row == {
        "label": 0, "user_id": "u", "item_id": 6, "category_id": 0, "hist_item_id": [1, 2],
        "hist_category_id": [1, 1], "age": 30, "gender": "F", "hour": 3, "weekday": 1, "ts": T0,
        "request_id": "a", "model_version": "v1", "key_id": "web", "served_ctr": 0.49, "rank": 2,
        "degraded": False, "propensity": 1.0, "explored": False,
    }  # fmt: skip


def test_a_schema_1_answer_from_an_older_service_exports_the_same_rows(streams, tmp_path):
    r, keys = streams
    record = {
        "schema": 1, "request_id": "old", "ts": T0, "user_id": "u", "model_version": "v0", "degraded": False,
        "fields": ["item_id", "category_id"], "history": [{"item_id": 1, "category_id": 1}],
        "profile": {"age": 30, "gender": "F"}, "context": {"hour": 3, "weekday": 1},
        "items": [{"rank": 1, "ctr": 0.7, "candidate": {"item_id": 9, "category_id": 0}},
                  {"rank": 2, "ctr": 0.2, "candidate": {"item_id": 4, "category_id": 1},
                   "propensity": 0.05, "explored": True}],
    }  # fmt: skip
    r.xadd(keys.impressions()[0], {"r": json.dumps(record)}, id=f"{int(T0 * 1000)}-*")
    click(r, keys, T0 + 5, "u", 4, request_id="old")
    Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 1000)
    got = [(x["item_id"], x["served_ctr"], x["rank"], x["propensity"], x["explored"], x["label"])
           for x in exported(tmp_path)]  # fmt: skip
    assert got == [(9, 0.7, 1, 1.0, False, 0), (4, 0.2, 2, 0.05, True, 1)]


def test_an_answer_waits_out_the_label_window_and_is_then_exported_once(streams, tmp_path):
    r, keys = streams
    answer(r, keys, T0, "a", "u", [5])
    answer(r, keys, T0 + 60, "b", "u", [5])
    exporter = Exporter(r, keys, tmp_path, WINDOW)
    assert done(exporter.export(now=T0 + 120)) == (1, 1, 1)
    click(r, keys, T0 + 150, "u", 5)  # after a was exported, within b's window
    assert done(exporter.export(now=T0 + 120)) == (0, 0, 1)
    assert Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 500).impressions == 1  # a new process
    assert labels(tmp_path) == {("a", 5): 0, ("b", 5): 1}
    assert Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 900).impressions == 0


class Crash(Exception):
    pass


@pytest.mark.parametrize("point", ["before_commit", "before_ack"])
def test_an_exporter_that_stops_between_writing_and_acknowledging_loses_and_duplicates_nothing(
    streams, tmp_path, monkeypatch, point
):
    r, keys = streams
    for k in range(5):
        answer(r, keys, T0 + k, f"r{k}", "u", [k, k + 10])
    click(r, keys, T0 + 2.5, "u", 12, request_id="r2")
    crashing = Exporter(r, keys, tmp_path, WINDOW)
    if point == "before_commit":  # files renamed into place, the batch not committed
        monkeypatch.setattr(crashing, "commit", lambda *a: (_ for _ in ()).throw(Crash()))
    else:  # committed, not acknowledged
        monkeypatch.setattr(crashing.r, "xack", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        crashing.export(now=T0 + 1000)
    monkeypatch.undo()
    again = Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 1000)
    assert again.impressions == (10 if point == "before_commit" else 0)
    got = labels(tmp_path)
    assert len(got) == 10 and sum(got.values()) == 1 and got[("r2", 12)] == 1
    assert r.xpending(keys.impressions()[0], "din-export")["pending"] == 0


def test_an_exporter_killed_at_random_points_loses_and_duplicates_nothing(streams, tmp_path):
    r, keys = streams
    n, start = 3000, time.time() - 3600  # served an hour ago: all ripe
    for k in range(n):
        answer(r, keys, start + k / 100, f"r{k}", k % 50, [k % 97, 1000 + k])
    for k in range(0, n, 7):
        click(r, keys, start + k / 100 + 1, k % 50, 1000 + k, request_id=f"r{k}")
    cmd = [sys.executable, "-m", "jobs.feedback", "export", "--redis-url", REDIS_URL, "--out", str(tmp_path),
           "--key-prefix", keys.prefix, "--label-window-seconds", "60", "--batch", "100"]  # fmt: skip
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    got = labels(tmp_path)
    assert len(got) == 2 * n
    assert {key for key, v in got.items() if v} == {(f"r{k}", 1000 + k) for k in range(0, n, 7)}
    commits = [json.loads(line) for line in (tmp_path / COMMITS).read_text().splitlines()]
    assert sum(c["rows"] for c in commits) == 2 * n


@pytest.mark.slow
def test_served_impressions_survive_a_redis_restart_and_score_back_to_the_served_ctr(trained, tmp_path):
    """Logged by the real service into a durable Redis, which restarts before the export; the
    exported rows, scored offline through the bundle, give the served CTRs back (no skew)."""
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    server = RedisServer(tmp_path, durable=True)
    server.start()
    try:
        settings = Settings(models=repo.root, redis_url=server.url, key_prefix="din:")
        served: dict[tuple[str, int], float] = {}
        clicked = set()
        with TestClient(create_app(settings)) as client:
            for u in range(30):
                events = [{"user_id": u, "item_id": u * 3 + j, "category_id": j % 4} for j in range(u % 25)]
                if events:
                    client.post("/events", json={"events": events})
                body = {
                    "user_id": u, "top_k": 5, "user": {"age": 20 + u % 30, "gender": "F" if u % 2 else "M"},
                    "candidates": [{"item_id": 500 + u * 10 + c, "category_id": c % 6} for c in range(12)],
                }  # fmt: skip
                got = client.post("/score", json=body).json()
                served |= {(got["request_id"], i["item_id"]): i["ctr"] for i in got["items"]}
                if u % 3 == 0:
                    top = got["items"][0]
                    click = {"user_id": u, "item_id": top["item_id"], "category_id": top["category_id"]}
                    client.post("/events", json={"events": [click | {"request_id": got["request_id"]}]})
                    clicked.add((got["request_id"], top["item_id"]))
        # The app's shutdown flushed the log; now Redis goes down and comes back from its AOF.
        server.kill()
        server.start()
        r = redis.Redis.from_url(server.url)
        out = tmp_path / "samples"
        counts = Exporter(r, Keys("din:"), out, 0).export(now=time.time() + 120)
        r.close()
    finally:
        server.kill()

    assert counts.impressions == len(served) == 150
    assert labels(out) == {key: int(key in clicked) for key in served}
    table = pq.read_table(out)
    offline = predict_bundle(load_bundle(trained[1]), table)
    assert np.abs(offline - np.array(table["served_ctr"])).max() <= 1e-5


def raw_entry(r: redis.Redis, keys: Keys, at: float, raw: bytes) -> None:
    r.xadd(keys.impressions()[0], {"r": raw}, id=f"{int(at * 1000)}-*")


def test_an_unusable_record_is_set_aside_with_its_reason_and_the_export_goes_on(streams, tmp_path):
    r, keys = streams
    answer(r, keys, T0, "a", "u", [1, 2])
    raw_entry(r, keys, T0 + 1, b"not json")
    raw_entry(r, keys, T0 + 2, json.dumps({"schema": 9, "request_id": "x"}).encode())
    bad_ctr = {
        "schema": 2, "request_id": "b", "ts": T0 + 3, "user_id": "u", "model_version": "v1",
        "degraded": False, "fields": ["item_id"], "history": [], "profile": {}, "context": {},
        "candidates": [{"item_id": 1}], "ctr": [0.5, 0.4],
    }  # fmt: skip
    raw_entry(r, keys, T0 + 3, json.dumps(bad_ctr).encode())
    answer(r, keys, T0 + 4, "c", "u", [3])
    r.xadd(keys.clicks()[0], {"r": b"\xff\xfe"})

    summary = Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 1000)
    assert done(summary) == (3, 2, 0)  # both good answers, whatever lay between them
    assert summary.set_aside == {"not_json": 2, "unknown_schema": 1, "bad_record": 1}
    assert "set aside 4 unusable records" in summary.describe(tmp_path, keys.dead_letters())
    letters = {e[1][b"reason"].decode(): e[1] for e in r.xrange(keys.dead_letters())}
    assert set(letters) == {"the record is not JSON", "not a feedback record of schema 1 or 2",
                            "ctr must hold one value per candidate"}  # fmt: skip
    assert letters["the record is not JSON"][b"stream"] in {
        k.encode() for k in (*keys.impressions(), *keys.clicks())
    }
    counts = {k.decode(): int(v) for k, v in r.hgetall(keys.dead_letter_counts()).items()}
    assert counts == {"not_json": 2, "unknown_schema": 1, "bad_record": 1}
    again = Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 2000)  # set aside once, not every run
    assert done(again) == (0, 0, 0) and not again.set_aside
    assert sorted(labels(tmp_path)) == [("a", 1), ("a", 2), ("c", 3)]


def test_integer_and_string_user_ids_in_one_hour_are_exported_and_read_back_as_different_users(
    streams, tmp_path
):
    """The case that stopped every later export: a user id sent as the string "1" beside integer ids."""
    from model.data import read_feedback

    r, keys = streams
    answer(r, keys, T0, "a", 1, [1, 2])
    answer(r, keys, T0 + 1, "b", "1", [1])
    answer(r, keys, T0 + 2, "c", 2, [3])
    click(r, keys, T0 + 3, "1", 1, request_id="b")
    summary = Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 1000)
    assert done(summary) == (4, 3, 0) and not summary.set_aside
    assert len(list(tmp_path.glob("*/*.parquet"))) == 2  # Parquet has no union type: one file per id type
    table = read_feedback(tmp_path)
    rows = {(row["request_id"], row["item_id"]): (row["user_id"], row["label"]) for row in table.to_pylist()}
    assert rows == {("a", 1): ("1", 0), ("a", 2): ("1", 0), ("b", 1): ('"1"', 1), ("c", 3): ("2", 0)}


def test_versions_with_other_features_share_an_hour_with_the_union_of_their_columns(
    streams, tmp_path, capsys
):
    """One hour served by three versions: v1 with a profile and context, v2 without them, v3 whose
    category is a string. Nothing is dropped: each file has every column, a feature a record lacks
    is null, and training reads the result (nulls and the minority type as the missing id)."""
    from contracts.schema import MISSING_INT, FeatureSpace
    from model.data import encode, infer_schema, read_feedback, vocab_columns

    r, keys = streams
    for k in range(6):
        answer(r, keys, T0 + k, f"v1-{k}", k, [k, k + 1])  # v1: age, gender, hour, weekday
    for k in range(3):
        record = {
            "request_id": f"v2-{k}", "ts": T0 + 10 + k, "user_id": k, "model_version": "v2",
            "degraded": False, "fields": ["item_id", "category_id"],
            "history": [{"item_id": 7, "category_id": 2, "ts": 1}],
            "profile": {}, "context": {}, "candidates": [{"item_id": 9, "category_id": 2}], "ctr": [0.3],
        }  # fmt: skip
        r.xadd(keys.impressions()[0], {"r": encode_feedback(record)}, id=f"{int((T0 + 10 + k) * 1000)}-*")
    v3 = {
        "request_id": "v3", "ts": T0 + 20, "user_id": 1, "model_version": "v3", "degraded": False,
        "fields": ["item_id", "category_id"], "history": [{"item_id": 7, "category_id": "shoes", "ts": 1}],
        "profile": {"age": 30}, "context": {"hour": 3, "weekday": 1},
        "candidates": [{"item_id": 9, "category_id": "shoes"}], "ctr": [0.3],
    }  # fmt: skip
    r.xadd(keys.impressions()[0], {"r": encode_feedback(v3)}, id=f"{int((T0 + 20) * 1000)}-*")
    assert done(Exporter(r, keys, tmp_path, WINDOW).export(now=T0 + 1000)) == (16, 10, 0)

    files = sorted(tmp_path.glob("*/*.parquet"))
    assert len({f.parent for f in files}) == 1  # one hour
    columns = {
        "age",
        "gender",
        "hour",
        "weekday",
        "item_id",
        "category_id",
        "hist_item_id",
        "hist_category_id",
    }
    for f in files:
        assert columns <= set(pq.read_schema(f).names)
    notes: list[str] = []
    table = read_feedback(tmp_path, notes)
    by_request = {row["request_id"]: row for row in table.to_pylist()}
    assert by_request["v2-0"]["age"] is None and by_request["v2-0"]["hour"] is None
    assert by_request["v1-0"]["age"] == 30 and by_request["v1-0"]["gender"] == "F"
    assert by_request["v3"]["category_id"] is None and by_request["v3"]["hist_category_id"] is None
    assert any(n.startswith("category_id: 1 values of type string read as missing") for n in notes), notes

    schema = infer_schema(table)
    space = FeatureSpace.build(schema, vocab_columns(table, schema))
    x = encode(table, space, 5)
    assert space.vocabs["age"].encode(np.array([MISSING_INT]))[0] >= 2  # missing is a trained value
    assert x.profile.shape == (16, 2) and (x.history_len == 1).sum() == 4  # v2's and v3's rows


def random_id(rng: random.Random, kind: str | None = None) -> int | str:
    """An id as the API takes one: an integer anywhere in 64 bits, or a string of 1-256 characters."""
    kind = kind or rng.choice(["int", "str"])
    if kind == "int":
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), rng.randrange(-(2**63), 2**63), rng.randrange(100)])
    alphabet = ["a", "Z", "1", " ", '"', "\\", "é", "€", "\U0001f600", "\u0000", "\n"]
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 7, 256])))


def random_traffic(client: TestClient, rng: random.Random, n: int) -> tuple[int, set[tuple[str, str]]]:
    """``n`` rounds of /profile, /score and /events bodies of every shape the API accepts (ids of
    either type wherever the model allows, extra fields, keys the model does not take, request
    ids or none); returns the items served and the (request id, item) pairs clicked."""
    served, clicked = 0, set()
    for k in range(n):
        user = random_id(rng)
        if rng.random() < 0.3:
            profile = {"age": rng.randrange(100), "gender": random_id(rng, "str"), "shoe": random_id(rng)}
            assert client.post("/profile", json={"user_id": user, "profile": profile}).status_code == 204
        candidates = [
            {"item_id": random_id(rng, "int"), "category_id": random_id(rng, "int")}
            | ({"campaign": random_id(rng)} if rng.random() < 0.3 else {})
            for _ in range(rng.choice([0, 1, 3, 20]))
        ]
        body: dict = {"user_id": user, "candidates": candidates, "explain": rng.random() < 0.2}
        if rng.random() < 0.5:
            body["user"] = {"age": random_id(rng, "int"), "extra": random_id(rng)}
        if rng.random() < 0.5:
            body["context"] = {
                "hour": rng.randrange(24),
                "weekday": rng.randrange(7),
                "promo": random_id(rng),
            }
        if rng.random() < 0.5:
            body["request_id"] = f"fuzz-{k}-{rng.randrange(10**6)}"
        if rng.random() < 0.3:
            body["top_k"] = rng.randrange(1, 5)
        r = client.post("/score", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        served += len({json.dumps(i["item_id"]) for i in answer["items"]})
        events = []
        for item in answer["items"]:
            if rng.random() < 0.3:
                event = {"user_id": user, "item_id": item["item_id"], "category_id": item["category_id"]}
                if rng.random() < 0.8:
                    event["request_id"] = answer["request_id"]
                    clicked.add((answer["request_id"], json.dumps(item["item_id"])))
                events.append(event | ({"note": random_id(rng)} if rng.random() < 0.3 else {}))
        if events:
            assert client.post("/events", json={"events": events}).status_code == 200
    return served, clicked


def test_every_input_the_api_accepts_is_exported_and_read_for_training(settings, tmp_path):
    """Whatever /score, /events and /profile accept, the export writes and training reads: no
    record is set aside, every served item is a row, every click with a request id a label."""
    from contracts.schema import FeatureSpace
    from model.data import encode, infer_schema, read_feedback, vocab_columns

    with TestClient(create_app(settings)) as client:
        served, clicked = random_traffic(client, random.Random(7), 300)
    r = redis.Redis.from_url(REDIS_URL)
    summary = Exporter(r, Keys(settings.key_prefix), tmp_path, 0).export(now=time.time() + 120)
    r.close()
    assert not summary.set_aside and summary.waiting == 0
    table = read_feedback(tmp_path)
    pairs = {(row["request_id"], json.dumps(row["item_id"])) for row in table.to_pylist()}
    assert summary.impressions == table.num_rows == served == len(pairs)
    assert {
        (row["request_id"], json.dumps(row["item_id"])) for row in table.to_pylist() if row["label"]
    } == clicked
    schema = infer_schema(table)
    x = encode(table, FeatureSpace.build(schema, vocab_columns(table, schema)), 20)
    assert len(x) == served and schema.behavior == ("item_id", "category_id")


def test_the_export_command_reads_where_the_service_writes_from_its_environment(
    streams, tmp_path, monkeypatch, capsys
):
    from jobs.feedback import main

    r, keys = streams
    answer(r, keys, time.time() - 10, "a", "u", [1, 2])
    monkeypatch.setenv("DIN_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("DIN_KEY_PREFIX", keys.prefix)
    assert main(["export", "--out", str(tmp_path / "logs"), "--label-window-seconds", "0"]) == 0
    assert "exported 2 impressions of 1 answers" in capsys.readouterr().out
    with redis_prefix() as elsewhere:  # a prefix the service never wrote under: said, not silent
        monkeypatch.setenv("DIN_KEY_PREFIX", elsewhere)
        assert main(["export", "--out", str(tmp_path / "other")]) == 0
        out, err = capsys.readouterr()
    assert "exported 0 impressions" in out
    assert f"no /score answer was ever logged under the prefix {elsewhere!r} at {REDIS_URL}" in err
