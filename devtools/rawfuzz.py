"""Raw-body fuzzing: what a schema-driven fuzzer never sends. Bytes that are not JSON or not UTF-8,
integers past 64 bits, deep nesting and wrong content types, on every JSON endpoint. Every error
answer must be a 4xx in the service's one error shape, and must not echo the input: each body
carries a marker that may not come back in an error's ``msg`` or ``type``. (``loc`` names the
field, so a key the client chose is named there; a 200 /score echoes candidate fields, by design.)"""

from __future__ import annotations

import http.client
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

ENDPOINTS = ("/score", "/events", "/profile")
CONTENT_TYPES = (None, "application/json", "text/plain", "application/x-www-form-urlencoded")
MARK = "qq-fuzz-marker-qq"
HUGE = ("18446744073709551616", "1" + "0" * 40, "-1180591620717411303424", "1e400", "-0", "NaN", "Infinity")


def bodies(rng: random.Random) -> Iterator[bytes]:
    """An endless, seeded stream of hostile bodies, each containing MARK."""
    m, ok = MARK, '{"item_id": 1, "category_id": 1}'
    while True:
        n = rng.choice(HUGE)
        texts = [
            f'{{"user_id": {n}, "candidates": [{{"item_id": 1, "category_id": "{m}"}}]}}',
            f'{{"user_id": 1, "candidates": [{{"item_id": {n}, "category_id": 1, "{m}": 1}}]}}',
            f'{{"events": [{{"user_id": {n}, "item_id": "{m}", "category_id": 1}}]}}',
            f'{{"events": [{{"user_id": 1, "item_id": 1, "category_id": 1, "ts": {n}, "x": "{m}"}}]}}',
            f'{{"user_id": 1, "profile": {{"age": {n}, "gender": ["{m}"]}}}}',
            f'{{"user_id": "{m}", "profile": {{"{m}": {n}}}}}',
            "[" * rng.randrange(100, 5000) + m,
            f'{{"user_id": 1, "candidates": [], "{m}": true}}',
            f"user_id=1&candidates={m}",
            f'{{"user_id": 1, "candidates": [{ok}], "top_k": "{m}"}}',
            f'{{"user_id": 1, "candidates": [{ok}' + m,
            f'{{"user_id": "\\ud800{m}", "candidates": []}}',  # a lone surrogate
        ]
        raw = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), b"\xff\xfe\x00\x9c"]
        yield rng.choice([t.encode() for t in texts] + [r + m.encode() for r in raw])


def error_shape_ok(payload: Any) -> bool:
    detail = payload.get("detail") if isinstance(payload, dict) else None
    return isinstance(detail, list) and all(
        isinstance(d, dict) and set(d) == {"loc", "msg", "type"} and isinstance(d["loc"], list)
        for d in detail
    )


def run_raw_fuzz(url: str, cases: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    stream = bodies(rng)
    statuses: Counter[int] = Counter()
    echoes = bad_shape = server_errors = 0
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    for i in range(cases):
        path, content_type, body = ENDPOINTS[i % 3], CONTENT_TYPES[(i // 3) % 4], next(stream)
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            conn.request("POST", path, body, headers)
            r = conn.getresponse()
            status, text = r.status, r.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
            status, text = 0, ""
        statuses[status] += 1
        if status >= 500 or status == 0:
            server_errors += 1
        elif status >= 400:
            try:
                payload = json.loads(text)
            except ValueError:
                bad_shape += 1
                continue
            if not error_shape_ok(payload):
                bad_shape += 1
                continue
            echoes += any(MARK in d["msg"] or MARK in d["type"] for d in payload["detail"])
    conn.close()
    return {
        "raw_cases": cases,
        "raw_statuses": dict(sorted(statuses.items())),
        "raw_server_errors": server_errors,
        "raw_echoes": echoes,
        "raw_bad_error_shape": bad_shape,
    }
