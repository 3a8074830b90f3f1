"""Admission control and deadlines, on the middleware alone and through the app."""

from __future__ import annotations

import asyncio

import httpx2 as httpx
import pytest
from prometheus_client import generate_latest

from service.limits import AdmissionControl
from service.metrics import Metrics

OK_BODY = {"user_id": 1, "candidates": [{"item_id": 1, "category_id": 1}]}


def gated_app(release: asyncio.Event, entered: asyncio.Event):
    """An ASGI app that answers 200 once ``release`` is set, reporting its deadline budget."""

    async def app(scope, receive, send):
        entered.set()
        await release.wait()
        deadline = scope.get("state", {}).get("deadline")
        body = str(float(deadline.budget_ms) if deadline else None).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def test_past_the_bound_requests_get_503_with_retry_after_at_once_and_are_counted():
    async def main():
        release, entered, metrics = asyncio.Event(), asyncio.Event(), Metrics()
        app = AdmissionControl(gated_app(release, entered), {"/score"}, 1, 0, 0, metrics)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.create_task(c.post("/score", json=OK_BODY))
            await entered.wait()
            refused = await asyncio.wait_for(c.post("/score", json=OK_BODY), 1)
            other_path = asyncio.create_task(c.get("/healthz"))  # not admission-controlled
            await asyncio.sleep(0.01)
            release.set()
            return refused, await first, await other_path, await c.post("/score", json=OK_BODY), metrics

    refused, first, other_path, after, metrics = asyncio.run(main())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["detail"][0]["type"] == "overloaded"
    assert first.status_code == other_path.status_code == after.status_code == 200
    text = generate_latest(metrics.registry).decode()
    assert 'din_rejected_total{reason="overload"} 1.0' in text and "din_in_flight 0.0" in text


def test_a_request_that_would_wait_past_the_ceiling_gets_503_at_once_and_a_shorter_queue_admits():
    async def main():
        release, entered, metrics = asyncio.Event(), asyncio.Event(), Metrics()
        app = AdmissionControl(gated_app(release, entered), {"/score"}, 64, 25, 0, metrics)
        app.estimate.completed(0.000, still_in_flight=1)  # this worker finishes a request per 10 ms
        app.estimate.completed(0.010, still_in_flight=0)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            held = [asyncio.create_task(c.post("/score", json=OK_BODY)) for _ in range(8)]
            while app.in_flight < 8:  # admitted at expected waits of 0 to 70 ms: a burst
                await asyncio.sleep(0.001)
            refused = await asyncio.wait_for(c.post("/score", json=OK_BODY), 1)  # 80 ms > 3 x 25
            release.set()
            answered = await asyncio.gather(*held)
            return refused, answered, await c.post("/score", json=OK_BODY)

    refused, answered, after = asyncio.run(main())
    assert refused.status_code == 503 and "80 ms of work queued" in refused.json()["detail"][0]["msg"]
    assert [r.status_code for r in answered] == [200] * 8 and after.status_code == 200


@pytest.mark.parametrize(("header", "budget"), [(None, "250.0"), ("40", "40.0")])
def test_each_admitted_request_carries_its_deadline(header, budget):
    async def main():
        release, entered = asyncio.Event(), asyncio.Event()
        release.set()
        app = AdmissionControl(gated_app(release, entered), {"/score"}, 4, 0, 250, Metrics())
        headers = {"X-Deadline-Ms": header} if header else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/score", json=OK_BODY, headers=headers)

    assert asyncio.run(main()).text == budget


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1e9", "nan"])
def test_a_bad_deadline_header_is_a_422_naming_it(client, value):
    r = client.post("/score", json=OK_BODY, headers={"X-Deadline-Ms": value})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "x-deadline-ms"]


def test_a_request_past_its_deadline_is_dropped_with_503_not_scored_late(client):
    r = client.post("/score", json=OK_BODY, headers={"X-Deadline-Ms": "0.000001"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["detail"][0]["type"] == "deadline_exceeded"
    assert client.post("/score", json=OK_BODY, headers={"X-Deadline-Ms": "5000"}).status_code == 200
    assert 'din_rejected_total{reason="deadline"} 1.0' in client.get("/metrics").text
