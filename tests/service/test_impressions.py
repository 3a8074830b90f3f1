"""The impression log: every item /score returns is logged with the features exactly as scored,
off the request path; clicks from /events go to the click stream in the same write."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from contracts.keys import Keys, decode_feedback
from service.main import create_app
from service.settings import Settings
from tests.helpers import REDIS_URL
from tests.service.conftest import changed

CANDIDATES = [{"item_id": i, "category_id": i % 7, "note": f"ad {i}"} for i in range(1, 9)]


def stream(settings: Settings, name: str, want: int = 1, timeout: float = 30) -> list[dict]:
    """The records of one stream, once at least ``want`` are there (the log flushes in the
    background; the timeout only stops a broken flush from hanging the test)."""
    r = redis.Redis.from_url(REDIS_URL)
    (key,) = getattr(Keys(settings.key_prefix), name)()
    deadline = time.time() + timeout
    try:
        while True:
            entries: Any = r.xrange(key)
            records = [decode_feedback(f[b"r"]) for _, f in entries]
            if len(records) >= want or time.time() > deadline:
                return records
            time.sleep(0.05)
    finally:
        r.close()


def test_score_answers_with_its_request_id_from_the_body_the_header_or_a_new_one(client):
    body = {"user_id": "rid", "candidates": CANDIDATES[:2]}
    made = client.post("/score", json=body)
    assert made.status_code == 200 and len(made.json()["request_id"]) == 32
    assert made.headers["x-request-id"] == made.json()["request_id"]
    assert client.post("/score", json=body, headers={"X-Request-Id": "h-1"}).json()["request_id"] == "h-1"
    both = client.post("/score", json=body | {"request_id": "b-1"}, headers={"X-Request-Id": "h-1"})
    assert both.json()["request_id"] == "b-1"


@pytest.mark.parametrize(
    ("where", "value"), [("body", "has space"), ("body", ""), ("body", "x" * 129), ("header", "a b")]
)
def test_a_bad_request_id_is_a_422_naming_where_it_was(client, where, value):
    body = {"user_id": "rid", "candidates": CANDIDATES[:1]}
    if where == "body":
        got = client.post("/score", json=body | {"request_id": value})
        loc = ["body", "request_id"]
    else:
        got = client.post("/score", json=body, headers={"X-Request-Id": value})
        loc = ["header", "x-request-id"]
    assert got.status_code == 422 and got.json()["detail"][0]["loc"] == loc
    assert value not in got.text or not value


def test_each_returned_item_is_logged_with_the_features_exactly_as_scored(client, settings):
    events = [{"user_id": "imp", "item_id": 40 + i, "category_id": i, "ts": 100 + i} for i in range(30)]
    client.post("/events", json={"events": events})
    context = {"hour": 7, "weekday": 2}
    answer = client.post(
        "/score",
        json={
            "user_id": "imp",
            "candidates": CANDIDATES,
            "top_k": 3,
            "context": context,
            "user": {"age": 30},
        },
    ).json()

    (record,) = stream(settings, "impressions")
    assert record["schema"] == 2 and record["request_id"] == answer["request_id"]
    assert record["user_id"] == "imp" and record["model_version"] == answer["model_version"]
    assert record["degraded"] is False and record["fields"] == ["item_id", "category_id"]
    # The history as read for the model: the newest max_history (20 for the test model), oldest first.
    assert record["history"] == [{k: e[k] for k in ("item_id", "category_id", "ts")} for e in events[-20:]]
    assert record["context"] == context
    assert set(record["profile"]) == {"age", "gender"} and record["profile"]["age"] == 30
    assert record["profile"]["gender"] is None  # not sent: scored as missing, logged as missing
    assert [i["rank"] for i in answer["items"]] == [1, 2, 3]  # top 3 only, logged in rank order
    assert record["ctr"] == [i["ctr"] for i in answer["items"]]
    assert record["candidates"] == [
        {k: i[k] for k in ("item_id", "category_id", "note")} for i in answer["items"]
    ]
    assert time.time() - 60 < record["ts"] <= time.time()


def test_clicks_go_to_the_click_stream_with_their_request_id(client, settings):
    client.post(
        "/events",
        json={
            "events": [
                {"user_id": "c", "item_id": 5, "category_id": 1, "ts": 7, "request_id": "r-9"},
                {"user_id": "c", "item_id": 6, "category_id": 1},
            ]
        },
    )
    clicks = stream(settings, "clicks", want=2)
    assert [(c["user_id"], c["item_id"], c["request_id"]) for c in clicks] == [
        ("c", 5, "r-9"),
        ("c", 6, None),
    ]
    assert (
        clicks[0]["ts"] == 7
        and abs(clicks[1]["ts"] - time.time()) < 60
        and clicks[1]["at"] >= clicks[0]["at"]
    )


@pytest.fixture
def logging_off(settings) -> Iterator[TestClient]:
    with TestClient(create_app(changed(settings, log_impressions=False))) as c:
        yield c


def test_with_logging_off_nothing_is_logged(logging_off, settings):
    logging_off.post("/score", json={"user_id": "off", "candidates": CANDIDATES})
    logging_off.post("/events", json={"events": [{"user_id": "off", "item_id": 1, "category_id": 1}]})
    time.sleep(0.3)  # several flush intervals: a record that were coming would be there
    assert stream(settings, "impressions", want=0) == [] and stream(settings, "clicks", want=0) == []


def test_a_sample_rate_logs_that_share_of_answers(settings):
    with TestClient(create_app(changed(settings, impression_sample_rate=0.25))) as c:
        for i in range(400):
            c.post("/score", json={"user_id": i, "candidates": CANDIDATES[:1]})
    n = len(stream(settings, "impressions", want=0))
    assert 60 <= n <= 140  # binomial(400, 0.25): mean 100, sd 8.7; this is ±4.6 sd


def metric(client: TestClient, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_an_unreachable_sink_drops_and_counts_impressions_and_score_still_answers(settings):
    dead = changed(
        settings, redis_url="redis://127.0.0.1:1/0", redis_timeout_ms=20, redis_write_timeout_ms=20
    )
    with TestClient(create_app(dead)) as c:
        for i in range(5):
            got = c.post("/score", json={"user_id": i, "candidates": CANDIDATES[:4], "top_k": 2})
            assert got.status_code == 200 and got.json()["degraded"] is True
        deadline = time.time() + 30
        while metric(c, "din_impressions_dropped_total") < 10 and time.time() < deadline:
            time.sleep(0.05)
        assert metric(c, 'din_impressions_dropped_total{reason="sink_error"}') == 10
        assert metric(c, "din_impressions_logged_total") == 0


def test_a_full_buffer_drops_and_counts_instead_of_growing(settings):
    prefix = f"test:{uuid.uuid4().hex}:"
    small = changed(settings, key_prefix=prefix, impression_buffer=2, impression_flush_ms=60_000)
    with TestClient(create_app(small)) as c:
        for i in range(5):
            assert c.post("/score", json={"user_id": i, "candidates": CANDIDATES[:3]}).status_code == 200
        assert metric(c, 'din_impressions_dropped_total{reason="buffer_full"}') == 9  # 3 answers x 3 items
    # On shutdown the two buffered answers were flushed, not lost.
    records = stream(changed(settings, key_prefix=prefix), "impressions", want=2)
    assert [r["user_id"] for r in records] == [0, 1]
    r = redis.Redis.from_url(REDIS_URL)
    r.delete(Keys(prefix).impressions()[0])
    r.close()
