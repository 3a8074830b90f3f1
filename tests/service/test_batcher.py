"""Micro-batching must not change any score, and one bad request must not fail its batch-mates."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient

from contracts.bundle import load_bundle
from contracts.feeds import concat, split
from service.batcher import MicroBatcher
from service.features import Features
from service.main import create_app


def request_feeds(bundle, seed: int, n: int, length: int):
    rng = np.random.default_rng(seed)
    hist = [{"item_id": int(i), "category_id": int(i % 50)} for i in rng.integers(0, 2000, length)]
    cands = [{"item_id": int(i), "category_id": int(i % 50)} for i in rng.integers(0, 2000, n)]
    features = Features(bundle.space)
    encoded = features.encode_rows(cands, bundle.space.schema.behavior)
    return features.feeds(hist, {"age": 25, "gender": "F"}, {"hour": 3, "weekday": 1}, encoded)


def test_merged_runs_equal_separate_runs(trained):
    bundle = load_bundle(trained[1])
    feeds = [
        request_feeds(bundle, s, n, length)
        for s, n, length in [(1, 5, 0), (2, 30, 20), (3, 1, 7), (4, 12, 3)]
    ]
    merged = bundle.run(concat(feeds), with_attention=True)
    for alone, together in zip(
        [bundle.run(f, with_attention=True) for f in feeds], split(merged, feeds), strict=True
    ):
        np.testing.assert_allclose(together[0], alone[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(together[1], alone[1], atol=1e-6, rtol=0)


def run_concurrently(bundle, feeds, run=None, wait_ms=20.0):
    async def main():
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as pool:
            batcher = MicroBatcher(
                run or bundle.run, lambda fn, f, e: loop.run_in_executor(pool, fn, f, e), wait_ms, 8, 1000, 2
            )
            batcher.start()
            results = await asyncio.gather(*(batcher.score(f, False) for f in feeds), return_exceptions=True)
            await batcher.stop()
            return results, batcher.batches

    return asyncio.run(main())


def test_requests_arriving_together_share_runs_and_get_their_own_scores(trained):
    bundle = load_bundle(trained[1])
    feeds = [request_feeds(bundle, s, 10 + s, s % 20) for s in range(16)]
    results, runs = run_concurrently(bundle, feeds)
    assert runs <= 4  # 16 requests, at most 8 per run
    for f, r in zip(feeds, results, strict=True):
        np.testing.assert_allclose(r[0], bundle.run(f)[0], atol=1e-6, rtol=0)


def test_a_failing_request_gets_its_own_error_and_its_batch_mates_their_scores(trained):
    bundle = load_bundle(trained[1])
    feeds = [request_feeds(bundle, s, 4, 5) for s in range(5)]
    feeds[2].candidate[0, 0] = -7  # a marker the run below refuses, like a model error would

    def run(f, explain):
        if (f.candidate == -7).any():
            raise RuntimeError("bad request")
        return bundle.run(f, explain)

    results, _ = run_concurrently(bundle, feeds, run=run)
    assert isinstance(results[2], RuntimeError)
    for i in (0, 1, 3, 4):
        np.testing.assert_allclose(results[i][0], bundle.run(feeds[i])[0], atol=1e-6, rtol=0)


def test_service_answers_the_same_with_micro_batching(trained, settings):
    body = {
        "user_id": 1,
        "candidates": [{"item_id": i, "category_id": i % 50} for i in range(30)],
        "user": {"age": 25, "gender": "F"},
        "context": {"hour": 3, "weekday": 1},
    }
    with TestClient(create_app(settings)) as plain:
        expected = plain.post("/score", json=body).json()["items"]
    batched_settings = settings.model_copy(update={"microbatch_wait_ms": 5.0})
    with TestClient(create_app(batched_settings)) as batched:
        got = batched.post("/score", json=body).json()["items"]
    assert [i["item_id"] for i in got] == [i["item_id"] for i in expected]
    np.testing.assert_allclose([i["ctr"] for i in got], [i["ctr"] for i in expected], atol=1e-6)


def test_a_stopped_batcher_still_answers_queued_and_late_requests(trained):
    """A hot swap stops the old model's batcher while requests holding that model may still call it."""
    bundle = load_bundle(trained[1])
    feeds = [request_feeds(bundle, s, 3, 4) for s in range(4)]

    async def main():
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as pool:
            batcher = MicroBatcher(
                bundle.run, lambda fn, f, e: loop.run_in_executor(pool, fn, f, e), 1000.0, 8, 1000, 2
            )
            batcher.start()
            queued = [asyncio.create_task(batcher.score(f, False)) for f in feeds[:3]]
            await asyncio.sleep(0.05)  # they wait in the open batch (max wait 1 s)
            await batcher.stop()
            late = await batcher.score(feeds[3], False)
            return [await q for q in queued] + [late]

    results = asyncio.run(asyncio.wait_for(main(), 5))
    for r, f in zip(results, feeds, strict=True):
        np.testing.assert_allclose(r[0], bundle.run(f)[0], atol=1e-6, rtol=0)
