"""The reliability scenarios (run them with scripts/reliability.py). Each takes the shared Suite and
a scale (1 = the full run; CI uses a small one) and returns its figures with ``pass``."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from contracts.api_keys import SCOPES, new_key
from contracts.keys import Keys, decode_history
from devtools.harness import ADMIN_TOKEN, HISTORY, PREFIX, Suite, fmt, host_of, rss_mb
from devtools.liveserver import ROOT
from devtools.loadgen import Answer, Run, _Connection, open_loop, pct, post, run_load
from devtools.rawfuzz import run_auth_fuzz, run_raw_fuzz
from devtools.stack import ANY_VERDICT
from model.onnx_export import export_bundle

TARGETS = {
    "overload": "503s answered within 50 ms (p99); accepted p99 ≤ 30 ms; 0 other 5xx",
    "overload-onset": "10 jumps from idle to 3x capacity: 503 p99 ≤ 50 ms in every one; 0 failed",
    "redis-outage": "0 5xx; recovery ≤ 1 s after Redis returns",
    "redeploy": "0 failed requests",
    "canary": "0 failed requests through canary start, promotion, a second start and abort",
    "fuzz": "≥ 1,000 schema cases (all checks) and ≥ 1,000 raw bodies; 0 5xx; 0 off the schema; 0 echoes",
    "events": "0 lost; per-writer order and the cap kept",
    "soak": "RSS growth ≤ 10%",
}


def overload(suite: Suite, scale: float) -> dict[str, Any]:
    with suite.stack.serve() as svc:
        capacity = suite.capacity(svc.url)
        rss_before = rss_mb(svc.pid)
        run = run_load(open_loop(svc.url, suite.score_request(host_of(svc.url)), 3 * capacity, 20 * scale))
        rss_after = rss_mb(svc.pid)
    s = run.summary()
    passed = s["other_5xx"] == 0 and s["failed"] == 0 and s["reject_p99_ms"] <= 50 and s["ok_p99_ms"] <= 30
    return {
        "capacity_rps": capacity,
        **s,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "pass": passed,
    }


def overload_onset(suite: Suite, scale: float) -> dict[str, Any]:
    """Load that jumps from idle to 3x capacity, again and again: the first moments of an overload
    are when a queue builds before the admission estimate has caught up. The client keeps its
    keep-alive connections across the idle gaps, as an upstream's pool does; the first jump, which
    must also open them all at once, is reported apart (``cold_connections_*``)."""
    onsets = 10 if scale >= 1 else 2
    seconds, idle = max(3 * scale, 1.0), max(2 * scale, 1.0)

    async def scenario(url: str, rate: float) -> list[Run]:
        runs: list[Run] = []
        pool: list[_Connection] = []
        for _ in range(onsets + 1):
            await asyncio.sleep(idle)  # the worker drains and idles, as before a real spike
            runs.append(await open_loop(url, suite.score_request(host_of(url)), rate, seconds, pool=pool))
        for conn in pool:
            conn.writer.close()
        return runs

    with suite.stack.serve() as svc:
        capacity = suite.capacity(svc.url)
        cold, *runs = run_load(scenario(svc.url, 3 * capacity))
    per_onset = []
    for run in [cold, *runs]:
        s = run.summary()
        start = min(a.at - a.latency_ms / 1000 for a in run.answers)
        first = [a for a in run.shed() if a.at - a.latency_ms / 1000 - start < 0.5]
        per_onset.append(s | {"reject_p99_first_half_second_ms": pct(first, 99)})
    cold_s, *warm = per_onset
    reject_p99 = [o["reject_p99_ms"] for o in warm]
    failed = sum(o["failed"] for o in per_onset)
    return {
        "capacity_rps": capacity,
        "onsets": onsets,
        "reject_p99_ms_per_onset": [round(v, 1) for v in reject_p99],
        "reject_p99_ms_worst": max(reject_p99),
        "reject_p99_first_half_second_ms_worst": max(o["reject_p99_first_half_second_ms"] for o in warm),
        "ok_p99_ms_worst": max(o["ok_p99_ms"] for o in warm),
        "share_503": float(np.mean([o["share_503"] for o in warm])),
        "cold_connections_reject_p99_ms": cold_s["reject_p99_ms"],
        "cold_connections_ok_p99_ms": cold_s["ok_p99_ms"],
        "failed": failed,
        "pass": failed == 0 and max(reject_p99) <= 50,
    }


def redis_outage(suite: Suite, scale: float) -> dict[str, Any]:
    phase = max(4 * scale, 2.0)  # before, down, after

    async def scenario(url: str, rate: float) -> tuple[Run, float, float]:
        load = asyncio.create_task(open_loop(url, suite.score_request(host_of(url)), rate, 3 * phase))
        await asyncio.sleep(phase)
        killed = time.monotonic()
        await asyncio.to_thread(suite.redis.kill)  # off the client's loop, so its schedule holds
        await asyncio.sleep(phase)
        back = await asyncio.to_thread(suite.redis.start)
        return await load, killed, back

    with suite.stack.serve() as svc:
        run, killed, back = run_load(scenario(svc.url, 0.5 * suite.capacity(svc.url)))
    suite.reload_behaviours()  # the restarted Redis kept nothing (no persistence here)
    s = run.summary()
    answered = [a for a in run.answers if a.status == 200]
    degraded = [a for a in answered if a.degraded]
    during = [a for a in answered if killed < a.at < back]
    last_degraded = max((a.at for a in degraded), default=back)
    recovery = max(last_degraded - back, 0.0)
    passed = s["other_5xx"] == 0 and s["failed"] == 0 and recovery <= 1.0
    return {
        "requests": len(run.answers),
        "5xx": s["other_5xx"],
        "shed_503": s["rejected_503"],  # admission control shedding a burst: counted apart, not failed
        "failed": s["failed"],
        "degraded_share": len(degraded) / max(len(answered), 1),
        "outage_seconds": back - killed,
        "p99_ms_during_outage": pct(during, 99),
        "recovery_seconds": recovery,
        "pass": passed,
    }


def redeploy(suite: Suite, scale: float) -> dict[str, Any]:
    v2 = suite.workdir / "v2"
    if not v2.exists():
        export_bundle(suite.workdir / "run" / "ckpt.pt", v2, version="v2")
    seconds = max(20 * scale, 8.0)
    cmd = [sys.executable, "scripts/redeploy.py", "--models", str(suite.repo.root), "--bundle", str(v2)]
    cmd += ["--admin-token", ADMIN_TOKEN, "--data", "synthetic", "--max-history", str(HISTORY)]
    cmd += [*ANY_VERDICT, "--work", str(suite.workdir / "redeploy")]

    async def scenario(url: str, rate: float) -> tuple[Run, float, int]:
        stop = asyncio.Event()
        load = asyncio.create_task(open_loop(url, suite.score_request(host_of(url)), rate, 600, stop=stop))
        await asyncio.sleep(seconds / 4)
        proc = await asyncio.create_subprocess_exec(*cmd, "--instance", url, cwd=ROOT)
        code = await proc.wait()
        done = time.monotonic()
        await asyncio.sleep(seconds / 4)  # traffic after the switch: no mixed state
        stop.set()
        return await load, done, code

    with suite.stack.serve() as svc:
        old = suite.repo.current()
        # Half of capacity; a quarter in the short CI runs, where the machine is busier and only
        # the behaviour is judged.
        rate = (0.5 if scale >= 1 else 0.25) * suite.capacity(svc.url)
        run, done, code = run_load(scenario(svc.url, rate))
    versions = [a.version for a in sorted(run.answers, key=lambda a: a.at) if a.status == 200]
    after = {a.version for a in run.of(200) if a.at - a.latency_ms / 1000 > done}  # sent after it
    shed = run.shed()  # admission control shedding a burst; the soak shows its rate without a redeploy
    failed = [a for a in run.answers if a.status != 200 and a not in shed]
    switched = bool(versions) and versions[0] == old and after == {"v2"}
    return {
        "requests": len(run.answers),
        "failed": len(failed),
        "shed_503": len(shed),
        "switched": switched,
        "from": old,
        "to": "v2",
        "script_exit_code": code,
        "pass": not failed and code == 0 and switched,
    }


def canary(suite: Suite, scale: float) -> dict[str, Any]:
    """An experiment's whole life under load: a canary started with scripts/redeploy.py --canary,
    promoted with scripts/experiment.py promote, a second canary started and aborted. Each step is
    a pointer flip rolled out by the scripts; traffic runs throughout and after each step."""
    names = ("canary-a", "canary-b")
    for name in names:
        if not (suite.workdir / name).exists():
            export_bundle(suite.workdir / "run" / "ckpt.pt", suite.workdir / name, version=name)
    pause = max(5 * scale, 2.0)
    rollout = ["--models", str(suite.repo.root), "--admin-token", ADMIN_TOKEN]
    redeploy = [sys.executable, "scripts/redeploy.py", *rollout, "--data", "synthetic", "--canary", "50",
                "--max-history", str(HISTORY), *ANY_VERDICT,
                "--work", str(suite.workdir / "redeploy")]  # fmt: skip
    experiment = [sys.executable, "scripts/experiment.py"]
    steps = [("start", [*redeploy, "--bundle", str(suite.workdir / names[0])]),
             ("promote", [*experiment, "promote", *rollout]),
             ("start", [*redeploy, "--bundle", str(suite.workdir / names[1])]),
             ("abort", [*experiment, "abort", *rollout])]  # fmt: skip

    async def scenario(url: str, rate: float) -> tuple[Run, list[tuple[str, float, float, int]]]:
        stop = asyncio.Event()
        load = asyncio.create_task(open_loop(url, suite.score_request(host_of(url)), rate, 900, stop=stop))
        done = []
        for name, cmd in steps:
            await asyncio.sleep(pause)
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*cmd, "--instance", url, cwd=ROOT)
            code = await proc.wait()
            done.append((name, started, time.monotonic(), code))
        await asyncio.sleep(pause)
        stop.set()
        return await load, done

    with suite.stack.serve() as svc:
        old = suite.repo.current()
        rate = (0.5 if scale >= 1 else 0.25) * suite.capacity(svc.url)
        run, done = run_load(scenario(svc.url, rate))
    # What each phase served: answers sent after its step had finished, before the next one began.
    expected = [{names[0], old}, {names[0]}, {names[0], names[1]}, {names[0]}]
    begins, ends = [t for _, _, t, _ in done], [t for _, t, _, _ in done[1:]] + [float("inf")]
    sent = [(a.at - a.latency_ms / 1000, a.at, a.version) for a in run.of(200) if a.version]
    phases = zip(begins, ends, strict=True)
    served = [sorted({v for t, at, v in sent if begin < t and at < end}) for begin, end in phases]
    shed = run.shed()
    failed = [a for a in run.answers if a.status != 200 and a not in shed]
    codes = [code for *_, code in done]
    phases_ok = [set(v) == want for v, want in zip(served, expected, strict=True)]
    return {
        "requests": len(run.answers),
        "failed": len(failed),
        "shed_503": len(shed),
        "steps": [name for name, *_ in done],
        "script_exit_codes": codes,
        "served_per_phase": served,
        "phases_as_expected": phases_ok,
        "from": old,
        "pass": not failed and codes == [0, 0, 0, 0] and all(phases_ok),
    }


def fuzz(suite: Suite, scale: float) -> dict[str, Any]:
    """Served with API keys, as a deployment on a network is: the fuzzers send a key of every scope,
    and a third one sends hostile Authorization headers."""
    examples = max(int(200 * scale), 10)  # per operation and phase; 200 gives > 1,000 cases
    key, entry = new_key("fuzz", set(SCOPES))
    with suite.stack.serve(api_keys=entry.line()) as svc:
        cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{svc.url}/openapi.json"]
        cmd += ["--checks", "all", "--max-examples", str(examples), "--workers", "1", "--seed", "1"]
        cmd += ["-H", f"Authorization: Bearer {key}", "--no-color"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        raw = run_raw_fuzz(svc.url, max(int(1200 * scale), 60), key=key)
        auth = run_auth_fuzz(svc.url, max(int(600 * scale), 60), key)
    generated = re.search(r"(\d+) generated", done.stdout)
    failures = dict(re.findall(r"❌ ([^:\n]+): (\d+)", done.stdout.split("SUMMARY")[-1]))
    cases = int(generated.group(1)) if generated else 0
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:])
    return {
        "cases": cases,
        "operations": int(m.group(1)) if (m := re.search(r"Tested: (\d+)", done.stdout)) else 0,
        "server_errors": int(failures.get("Server error", 0)),
        "failures": sum(int(v) for v in failures.values()),
        "failure_kinds": failures,
        **raw,
        **auth,
        "pass": done.returncode == 0
        and cases >= (1000 if scale >= 1 else 1)
        and raw["raw_server_errors"] == raw["raw_echoes"] == raw["raw_bad_error_shape"] == 0
        and auth["auth_server_errors"] == auth["auth_let_through"] == auth["auth_bad_error_shape"] == 0,
    }


def events(suite: Suite, scale: float) -> dict[str, Any]:
    writers, users, batch, cap = 50, 100, 10, 250
    total = max(int(10_000 * scale), writers * batch)
    per_writer = total // writers
    keys = Keys(PREFIX)
    user_of = np.random.default_rng(0).integers(0, users, size=(writers, per_writer))

    def event(w: int, seq: int, user: str) -> dict[str, Any]:
        return {"user_id": user, "item_id": w * 1_000_000 + seq, "category_id": 1, "ts": seq}

    async def send(conn: _Connection, url: str, body: bytes, statuses: list[int]) -> None:
        """A well-behaved client: a 503 (nothing written) is retried after Retry-After."""
        for _ in range(20):
            status = (await conn.request(post("/events", body, host_of(url))))[0]
            statuses.append(status)
            if status != 503:
                return
            await asyncio.sleep(0.1)

    async def writer(url: str, w: int, statuses: list[int]) -> None:
        conn = _Connection(*await asyncio.open_connection(*host_of(url).split(":")))
        for start in range(0, per_writer, batch):
            seqs = range(start, min(start + batch, per_writer))
            body = json.dumps({"events": [event(w, s, f"ev-{user_of[w, s]}") for s in seqs]}).encode()
            await send(conn, url, body, statuses)
        conn.writer.close()

    async def cap_writer(url: str, statuses: list[int]) -> None:
        conn = _Connection(*await asyncio.open_connection(*host_of(url).split(":")))
        for start in range(0, cap + 50, batch):
            body = json.dumps({"events": [event(99, s, "ev-cap") for s in range(start, start + batch)]})
            await send(conn, url, body.encode(), statuses)
        conn.writer.close()

    async def scenario(url: str) -> list[int]:
        statuses: list[int] = []
        await asyncio.gather(*(writer(url, w, statuses) for w in range(writers)), cap_writer(url, statuses))
        return statuses

    client = redis.Redis.from_url(suite.redis.url)
    client.delete(*(keys.history(f"ev-{u}") for u in range(users)), keys.history("ev-cap"))
    t0 = time.monotonic()
    with suite.stack.serve(history_cap=cap) as svc:
        statuses = run_load(scenario(svc.url))
    seconds = time.monotonic() - t0
    stored = {
        u: [r["item_id"] for r in decode_history(client.lrange(keys.history(f"ev-{u}"), 0, -1))]
        for u in range(users)
    }
    capped = [r["item_id"] for r in decode_history(client.lrange(keys.history("ev-cap"), 0, -1))]
    client.close()
    sent = {(w * 1_000_000 + s) for w in range(writers) for s in range(per_writer)}
    got = [i for items in stored.values() for i in items]
    out_of_order = sum(
        1
        for items in stored.values()
        for w in range(writers)
        if (seq := [i for i in items if i // 1_000_000 == w]) != sorted(seq)
    )
    misplaced = sum(
        1 for u, items in stored.items() for i in items if user_of[i // 1_000_000, i % 1_000_000] != u
    )
    cap_ok = capped == [99_000_000 + s for s in range(cap + 50)][-cap:]
    lost = len(sent - set(got))
    return {
        "writers": writers,
        "events": len(sent),
        "users": users,
        "lost": lost,
        "duplicates": len(got) - len(set(got)),
        "misplaced": misplaced,
        "writer_order_violations": out_of_order,
        "cap_kept": cap_ok,
        "retried_503": sum(1 for s in statuses if s == 503),
        "other_non_200": sum(1 for s in statuses if s not in (200, 503)),
        "events_per_second": len(sent) / seconds,
        "pass": lost == 0
        and len(got) == len(set(got))
        and not out_of_order
        and not misplaced
        and cap_ok
        and all(s in (200, 503) for s in statuses),
    }


def soak(suite: Suite, scale: float) -> dict[str, Any]:
    seconds = max(600 * scale, 10.0)
    window = seconds / 10
    rss: list[tuple[float, float]] = []

    with suite.stack.serve() as svc:
        rate = 0.5 * suite.capacity(svc.url)
        sample: Callable[[float], None] = lambda _: rss.append((time.monotonic(), rss_mb(svc.pid)))  # noqa: E731
        run = run_load(
            open_loop(svc.url, suite.score_request(host_of(svc.url)), rate, seconds, on_tick=sample)
        )
    start = min(a.at for a in run.answers)
    windows: list[list[Answer]] = [[] for _ in range(10)]
    for a in run.answers:
        windows[min(int((a.at - start) // window), 9)].append(a)
    p99 = [pct([a for a in w if a.status == 200], 99) for w in windows]
    warm = [m for t, m in rss if t - start >= window] or [rss[-1][1]]  # after the first window's warm-up
    growth = (warm[-1] - warm[0]) / warm[0]
    s = run.summary()
    return {
        "seconds": seconds,
        "rate_rps": rate,
        "requests": len(run.answers),
        "failed": s["failed"] + s["other_5xx"],  # no answer, or a 5xx other than admission's 503
        "rejected_503": s["rejected_503"],  # admission control shedding a burst
        "p99_first_window_ms": p99[0],
        "p99_last_window_ms": p99[-1],
        "p99_drift_ms": p99[-1] - p99[0],
        "rss_start_mb": rss[0][1],
        "rss_after_warmup_mb": warm[0],
        "rss_end_mb": warm[-1],
        "rss_growth_pct": 100 * growth,
        "pass": growth <= 0.10 and s["failed"] == 0 and s["other_5xx"] == 0,
    }


SCENARIOS: dict[str, Callable[[Suite, float], dict[str, Any]]] = {
    "overload": overload,
    "overload-onset": overload_onset,
    "redis-outage": redis_outage,
    "redeploy": redeploy,
    "canary": canary,
    "fuzz": fuzz,
    "events": events,
    "soak": soak,
}

FIGURES = {
    "overload": ("capacity_rps", "offered_rps", "share_503", "reject_p99_ms", "ok_p99_ms", "other_5xx",
                 "rss_before_mb", "rss_after_mb"),
    "overload-onset": ("capacity_rps", "onsets", "reject_p99_ms_worst",
                       "reject_p99_first_half_second_ms_worst", "ok_p99_ms_worst", "share_503",
                       "cold_connections_reject_p99_ms", "failed"),
    "redis-outage": ("5xx", "shed_503", "degraded_share", "p99_ms_during_outage", "recovery_seconds"),
    "redeploy": ("requests", "failed", "shed_503", "from", "to"),
    "canary": ("requests", "failed", "shed_503", "steps", "served_per_phase"),
    "fuzz": ("cases", "operations", "server_errors", "failures", "raw_cases", "raw_server_errors",
             "raw_echoes", "raw_bad_error_shape"),
    "events": ("events", "writers", "lost", "duplicates", "writer_order_violations", "cap_kept"),
    "soak": ("seconds", "rate_rps", "requests", "failed", "rejected_503",
             "p99_first_window_ms", "p99_last_window_ms", "rss_after_warmup_mb",
             "rss_end_mb", "rss_growth_pct"),
}  # fmt: skip


def readme_table(reports: dict[str, dict[str, Any]], machine: str) -> str:
    rows = ["| scenario | target | measured | pass |", "|---|---|---|---|"]
    for name, r in reports.items():
        figures = ", ".join(f"{k} {fmt(r[k])}" for k in FIGURES[name] if k in r)
        rows.append(f"| {name} | {TARGETS[name]} | {figures} | {'yes' if r['pass'] else '**no**'} |")
    return "\n".join(rows) + f"\n\nMachine: {machine}."
