"""Every answer is counted by route and status code, refusals and unknown paths included."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.main import create_app
from tests.service.conftest import changed


def counts(text: str) -> dict[tuple[str, str], float]:
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "din_http_responses"]
    return {
        (s.labels["route"], s.labels["code"]): s.value for s in family.samples if s.name.endswith("_total")
    }


def test_answers_are_counted_by_route_and_code(client):
    client.get("/healthz")
    client.post("/score", json={"user_id": 1, "candidates": [{"item_id": 1, "category_id": 1}]})
    client.post("/score", json={"user_id": 1})  # no candidates: 422
    client.post("/score", content=b"x" * 10, headers={"content-type": "text/plain"})  # 415
    for path in ("/nope", "/a/b/c"):
        client.get(path)
    got = counts(client.get("/metrics").text)
    assert got[("/healthz", "200")] == 1 and got[("/score", "200")] == 1
    assert got[("/score", "422")] == 1 and got[("/score", "415")] == 1
    assert got[("other", "404")] == 2  # unknown paths share one label


def test_a_refusal_of_the_body_limit_is_counted_too(settings):
    from fastapi.testclient import TestClient

    with TestClient(create_app(changed(settings, max_body_bytes=1024))) as c:
        assert c.post("/score", content=b"{" + b" " * 5000 + b"}").status_code == 413
        assert counts(c.get("/metrics").text)[("/score", "413")] == 1
