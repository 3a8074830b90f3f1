import re
from concurrent.futures import ThreadPoolExecutor

import orjson
import redis

from contracts.keys import Keys
from tests.helpers import REDIS_URL


def test_readyz_reports_model_and_redis(client):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"model": "test-v1", "redis": "ok"}


def test_model_endpoint_reports_the_serving_version_pointer_and_manifest(client):
    m = client.get("/model").json()
    assert m["version"] == m["pointer"] == "test-v1" and m["last_reload"] is None
    assert m["manifest"]["max_history"] == 20 and "signature" in m["manifest"]


def test_metrics_expose_stage_histograms_candidates_and_model_version(client):
    client.post("/score", json={"user_id": 1, "candidates": [{"item_id": 1, "category_id": 1}] * 3})
    text = client.get("/metrics").text
    for stage in ("redis", "model", "total"):
        assert re.search(rf'din_score_stage_seconds_count{{stage="{stage}"}} 1\.0', text), stage
    assert "din_score_candidates_bucket" in text
    assert 'din_model_info{version="test-v1"} 1.0' in text


def test_metrics_count_the_records_the_feedback_export_set_aside(client, settings):
    """The exporter is another process; what it set aside is counted in Redis and shown here."""
    assert "din_feedback_dead_letters_total{" not in client.get("/metrics").text
    with redis.Redis.from_url(REDIS_URL) as r:
        r.hset(Keys(settings.key_prefix).dead_letter_counts(), mapping={"not_json": 2, "bad_record": 1})
    text = client.get("/metrics").text
    assert 'din_feedback_dead_letters_total{kind="not_json"} 2.0' in text
    assert 'din_feedback_dead_letters_total{kind="bad_record"} 1.0' in text


def test_docs_render_without_internet(client):
    html = client.get("/docs").text
    assert "swagger-ui-bundle.js" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and not [a for a in assets if a.startswith("http")]  # nothing from a CDN
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    spec = client.get("/openapi.json").json()
    assert {"/score", "/events", "/profile", "/healthz", "/readyz", "/metrics", "/model"} <= set(
        spec["paths"]
    )


def test_concurrent_events_for_one_user_lose_nothing_and_keep_each_writers_order(client, settings):
    writers, per_writer = 8, 5  # 40 events <= history_cap (50)

    def write(w: int) -> None:
        for k in range(per_writer):
            event = {"user_id": "hot", "item_id": 1000 * w + k, "category_id": w, "ts": k}
            assert client.post("/events", json={"events": [event]}).status_code == 200

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    r = redis.Redis.from_url(settings.redis_url)
    stored = [orjson.loads(x) for x in r.lrange(Keys(settings.key_prefix).history("hot"), 0, -1)]
    r.close()
    assert len(stored) == writers * per_writer
    for w in range(writers):
        mine = [e["item_id"] for e in stored if e["category_id"] == w]
        assert mine == [1000 * w + k for k in range(per_writer)]
