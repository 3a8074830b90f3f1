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


def authorization_headers(rng: random.Random, key: str) -> Iterator[list[tuple[str, bytes]]]:
    """An endless, seeded stream of hostile Authorization headers (raw bytes): empty, huge, not
    ASCII, other schemes, the key mangled, several headers at once. None of them is the key."""
    mark = MARK.encode()
    while True:
        secret = key.split(".", 1)[1].encode()
        values = [
            b"",
            b"Bearer",
            b"Bearer ",
            b"Bearer " + b"A" * rng.randrange(300, 7000),
            "Bearer clé-ünïcode-🔑".encode(),
            b"Bearer \xff\xfe" + mark,
            b"Basic " + mark,
            b"bearer " + key.encode()[:-1],
            b"Bearer " + key.encode() + b"x",
            b"Bearer ." + secret,
            b"Bearer " + key.split(".")[0].encode() + b".",
            b"Bearer " + mark + b"." + secret,
            bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 400))),
        ]
        one = rng.choice(values)
        yield rng.choice(
            [[("Authorization", one)], [("Authorization", one), ("Authorization", b"Bearer " + key.encode())]]
        )


def run_auth_fuzz(url: str, cases: int, key: str, seed: int = 1) -> dict[str, Any]:
    """Hostile Authorization headers on each protected route, with a valid body: each must be
    answered 400 (a header the HTTP parser refuses), 401 or 431, in the error shape, never a 5xx
    and never let through."""
    rng = random.Random(seed)
    stream = authorization_headers(rng, key)
    body = {"/score": b'{"user_id": 1, "candidates": []}', "/events": b'{"events": []}',
            "/profile": b'{"user_id": 1, "profile": {}}'}  # fmt: skip
    out = _run(url, cases, lambda i: (ENDPOINTS[i % 3], body[ENDPOINTS[i % 3]], next(stream)), prefix="auth")
    out["auth_let_through"] = sum(
        n for status, n in out["auth_statuses"].items() if status not in AUTH_REFUSALS
    )
    return out


AUTH_REFUSALS = {0, 400, 401, 431}  # 0: the server closed a connection it would not parse


def run_raw_fuzz(url: str, cases: int, seed: int = 1, key: str | None = None) -> dict[str, Any]:
    """Hostile bodies on every JSON endpoint, sent with ``key`` when the service needs one."""
    rng = random.Random(seed)
    stream = bodies(rng)
    auth = [("Authorization", f"Bearer {key}".encode())] if key else []

    def case(i: int) -> tuple[str, bytes, list[tuple[str, bytes]]]:
        content_type = CONTENT_TYPES[(i // 3) % 4]
        headers = [("Content-Type", content_type.encode())] if content_type else []
        return ENDPOINTS[i % 3], next(stream), headers + auth

    return _run(url, cases, case, prefix="raw")


def _run(url: str, cases: int, case: Any, prefix: str) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    echoes = bad_shape = server_errors = 0
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    for i in range(cases):
        path, body, headers = case(i)
        try:
            conn.putrequest("POST", path)
            for name, value in headers:
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            status, text = r.status, r.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException, ValueError):
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
        f"{prefix}_cases": cases,
        f"{prefix}_statuses": dict(sorted(statuses.items())),
        f"{prefix}_server_errors": server_errors,
        f"{prefix}_echoes": echoes,
        f"{prefix}_bad_error_shape": bad_shape,
    }
