"""Admission control and deadlines, on the middleware alone and through the app."""

from __future__ import annotations

import asyncio

import httpx2 as httpx
import pytest
from prometheus_client import generate_latest

from service.limits import AdmissionControl, WaitEstimate
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


def test_the_wait_estimate_learns_only_from_busy_gaps_between_completions():
    est = WaitEstimate(smoothing=0.1)
    est.completed(0.000, still_in_flight=2)  # first completion: nothing to compare with yet
    est.completed(0.002, still_in_flight=1)
    assert est.seconds_per_completion == pytest.approx(0.002)
    est.completed(0.004, still_in_flight=0)  # same gap; then the worker goes idle
    est.completed(1.000, still_in_flight=1)  # the idle second is not a service time
    assert est.seconds_per_completion == pytest.approx(0.002)
    est.completed(1.003, still_in_flight=1)
    assert est.seconds_per_completion == pytest.approx(0.002 + 0.1 * (0.003 - 0.002))
    est.completed(1.503, still_in_flight=0)  # one request stalled 0.5 s: counted as 2x, not 250x
    assert est.seconds_per_completion == pytest.approx(0.0021 + 0.1 * 0.0021)
    assert est.wait(5) == pytest.approx(5 * 0.00231)


def test_a_request_expected_to_wait_past_the_queue_budget_gets_503_and_a_shorter_queue_admits():
    async def main():
        release, entered, metrics = asyncio.Event(), asyncio.Event(), Metrics()
        app = AdmissionControl(gated_app(release, entered), {"/score"}, 64, 25, 0, metrics)
        app.estimate.seconds_per_completion = 0.010  # this worker finishes a request per 10 ms
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            held = [asyncio.create_task(c.post("/score", json=OK_BODY)) for _ in range(3)]
            while app.in_flight < 3:  # the first two were admitted at 0 and 10 ms, the third at 20
                await asyncio.sleep(0.001)
            refused = await asyncio.wait_for(c.post("/score", json=OK_BODY), 1)  # 30 ms > 25
            release.set()
            answered = await asyncio.gather(*held)
            return refused, answered, await c.post("/score", json=OK_BODY)

    refused, answered, after = asyncio.run(main())
    assert refused.status_code == 503 and "30 ms of work queued" in refused.json()["detail"][0]["msg"]
    assert [r.status_code for r in answered] == [200, 200, 200] and after.status_code == 200


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
