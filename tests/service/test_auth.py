"""API keys on every route: the documented code for no key, a wrong scope, the right scope and a
revoked key; rotation without a restart; the key id where the operator looks; per-key write limits."""

from __future__ import annotations

import asyncio
import hmac
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contracts import api_keys
from contracts.api_keys import new_key, parse_entries, verify
from service import auth
from service.auth import KeyRing, arrived_from_network, bearer
from service.errors import RateLimited
from service.main import create_app
from service.metrics import Metrics
from tests.service.conftest import changed
from tests.service.test_impressions import stream

CANDIDATES = [{"item_id": 1, "category_id": 1}, {"item_id": 2, "category_id": 2}]
SCORE = {"user_id": 7, "candidates": CANDIDATES}
EXPLAIN = SCORE | {"explain": True}
EVENTS = {"events": [{"user_id": 7, "item_id": 3, "category_id": 1}]}
PROFILE = {"user_id": 7, "profile": {"age": 30}}
# route -> (body, the scope it needs)
ROUTES = {
    "/score": (SCORE, "score"),
    "/score explain": (EXPLAIN, "explain"),
    "/events": (EVENTS, "write"),
    "/profile": (PROFILE, "write"),
    "/admin/reload": (None, "admin"),
}
OK = {"/score": 200, "/score explain": 200, "/events": 200, "/profile": 204, "/admin/reload": 200}


def call(client: TestClient, route: str, key: str | None):
    body, _ = ROUTES[route]
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return client.post(route.split()[0], json=body, headers=headers)


@pytest.fixture
def keyfile(tmp_path) -> tuple[Path, dict[str, str]]:
    """A key file with one key per scope (and "score" also for explain), plus a key of every scope."""
    keys, entries = {}, []
    for name, scopes in {
        "scorer": {"score"},
        "explainer": {"score", "explain"},
        "writer": {"write"},
        "admin": {"admin"},
        "all": set(api_keys.SCOPES),
    }.items():
        key, entry = new_key(name, scopes)
        keys[name] = key
        entries.append(entry.line())
    path = tmp_path / "api-keys"
    path.write_text("# id scopes sha256\n" + "\n".join(entries) + "\n")
    return path, keys


@pytest.fixture
def keyed(settings, keyfile):
    path, keys = keyfile
    with TestClient(create_app(changed(settings, api_keys_file=path))) as c:
        yield c, path, keys


def rewrite(path: Path, lines: list[str]) -> None:
    """A new file in place of the old one, as a Secret volume or an editor does; then the ring's
    next look (RELOAD_EVERY) is forced by moving its clock past it."""
    tmp = path.with_suffix(".new")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def reread(client: TestClient) -> None:
    client.app.state.services.keys.checked = -1e18  # type: ignore[attr-defined]


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_answers_its_documented_code_for_each_kind_of_caller(keyed, route):
    client, path, keys = keyed
    _, needed = ROUTES[route]
    # no key: 401 with the challenge
    r = call(client, route, None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="din-serve"'
    assert r.json()["detail"][0]["loc"] == ["header", "authorization"]
    # a wrong scope: 403 (a key whose scopes exclude this one)
    wrong = next(k for n, k in keys.items() if n != "all" and needed not in parse_scopes(path)[n])
    r = call(client, route, wrong)
    assert r.status_code == 403 and needed in r.json()["detail"][0]["msg"]
    # the right scope
    right = next(k for n, k in keys.items() if n != "all" and needed in parse_scopes(path)[n])
    if route == "/score explain":
        right = keys["explainer"]
    assert call(client, route, right).status_code == OK[route]
    # revoked: its entry removed from the file, then 401
    revoked_id = right.split(".")[0]
    kept = [e.line() for e in parse_entries(path.read_text()).values() if e.id != revoked_id]
    rewrite(path, kept)
    reread(client)
    assert call(client, route, right).status_code == 401
    assert call(client, route, keys["all"]).status_code == OK[route]


def parse_scopes(path: Path) -> dict[str, frozenset[str]]:
    return {i: e.scopes for i, e in parse_entries(path.read_text()).items()}


def test_a_key_is_rotated_without_a_restart_both_valid_in_between(keyed):
    client, path, keys = keyed
    old = keys["scorer"]
    new, entry = new_key("scorer-2", {"score"})
    assert call(client, "/score", new).status_code == 401
    rewrite(path, [*path.read_text().splitlines(), entry.line()])
    reread(client)
    assert call(client, "/score", old).status_code == 200 and call(client, "/score", new).status_code == 200
    rewrite(path, [line for line in path.read_text().splitlines() if not line.startswith("scorer ")])
    reread(client)
    assert call(client, "/score", old).status_code == 401 and call(client, "/score", new).status_code == 200


def test_a_key_file_that_stops_parsing_keeps_the_keys_it_held(keyed, caplog):
    client, path, keys = keyed
    rewrite(path, ["this is not an entry"])
    reread(client)
    assert call(client, "/score", keys["scorer"]).status_code == 200
    assert "previous keys stay valid" in caplog.text and "not an entry" not in caplog.text
    path.unlink()
    reread(client)
    assert call(client, "/score", keys["scorer"]).status_code == 200


def test_health_metrics_docs_and_the_page_stay_open(keyed):
    client, _, _ = keyed
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/ui"):
        assert client.get(path).status_code == 200, path


def test_the_admin_token_still_works_beside_the_keys(settings, keyfile):
    path, keys = keyfile
    token = "admin-token-0123456789"
    with TestClient(create_app(changed(settings, api_keys_file=path, admin_token=token))) as client:
        assert client.post("/admin/reload", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert call(client, "/admin/reload", keys["admin"]).status_code == 200
        assert call(client, "/admin/reload", keys["writer"]).status_code == 403
        assert call(client, "/admin/reload", "wrong").status_code == 401


def test_the_key_id_is_on_the_impression_record_and_metrics_never_the_key(keyed, settings):
    client, _, keys = keyed
    assert call(client, "/score", keys["scorer"]).status_code == 200
    assert call(client, "/score", None).status_code == 401
    (record,) = stream(settings, "impressions")
    assert record["key_id"] == "scorer"
    text = client.get("/metrics").text
    assert 'din_authenticated_requests_total{key="scorer",scope="score"} 1.0' in text
    assert 'din_auth_refused_total{reason="missing"} 1.0' in text
    assert keys["scorer"].split(".")[1] not in text


def test_openapi_publishes_the_bearer_scheme_and_the_refusals(keyed):
    client, _, _ = keyed
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKey"]["scheme"] == "bearer"
    for path in ("/score", "/events", "/profile"):
        op = spec["paths"][path]["post"]
        assert op["security"] == [{"APIKey": []}] and {"401", "403"} <= set(op["responses"])
    assert "429" in spec["paths"]["/events"]["post"]["responses"]


def test_without_keys_a_request_from_the_network_is_refused_unless_opted_out(client, settings):
    """uvicorn started by hand on 0.0.0.0 (``python -m service`` refuses that start)."""
    on_network = {"type": "http", "server": ("10.0.0.5", 8000)}
    assert arrived_from_network(on_network)
    assert not arrived_from_network({"server": ("127.0.0.1", 8000)})
    assert not arrived_from_network({"server": ("::1", 8000)})
    assert not arrived_from_network({"server": ("testserver", 80)})  # names no interface
    assert call(client, "/score", None).status_code == 200  # the test client is local


@pytest.mark.parametrize("allow", [False, True])
def test_the_middleware_refuses_a_network_request_without_keys_unless_opted_out(allow):
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/events", "headers": [], "server": ("10.0.0.5", 8000)}
    middleware = auth.Authentication(app, KeyRing(None, None), Metrics(), allow)
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == (200 if allow else 403)


def test_bad_key_entries_stop_the_start_and_name_the_entry_not_the_digest(settings, tmp_path):
    _, entry = new_key("web", {"score"})
    with pytest.raises(ValueError, match="entry 2"):
        changed(settings, api_keys=f"{entry.line()};web score,fly {'a' * 64}")
    path = tmp_path / "keys"
    path.write_text(f"{entry.line()}\nweb score\n")
    with pytest.raises(ValueError, match="entry 2: expected") as e:
        create_app(changed(settings, api_keys_file=path))
    assert entry.digest.hex() not in str(e.value)
    with pytest.raises(FileNotFoundError):
        create_app(changed(settings, api_keys_file=tmp_path / "absent"))


def test_verify_compares_digests_in_constant_time_even_for_an_unknown_id(monkeypatch):
    key, entry = new_key("web", {"score"})
    entries = {"web": entry}
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", spy)
    assert verify(entries, key) == entry
    assert verify(entries, key + "x") is None
    assert verify(entries, "nobody." + key.split(".")[1]) is None
    assert verify(entries, "") is None
    assert len(seen) == 4 and all(len(a) == len(b) == 32 for a, b in seen)


def test_entries_and_keys_have_the_documented_format():
    key, entry = new_key("web-1", {"write", "score"})
    key_id, secret = key.split(".")
    assert key_id == "web-1" and len(secret) >= 43
    assert entry.line() == f"web-1 score,write {entry.digest.hex()}"
    assert parse_entries(f"# comment\n{entry.line()}  # trailing\n") == {"web-1": entry}
    for bad in ("web", f"w eb score {'a' * 64}", f"web fly {'a' * 64}", f"web score {'A' * 64}"):
        with pytest.raises(ValueError, match="API key entry 1"):
            parse_entries(bad)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"authorization", b"Bearer abc.def")], "abc.def"),
        ([(b"Authorization", b"bearer   abc.def  ")], "abc.def"),
        ([(b"authorization", b"Basic abc")], ""),
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], ""),
        ([(b"authorization", "Bearer é".encode())], ""),
        ([(b"authorization", b"Bearer " + b"a" * 5000)], ""),
        ([(b"authorization", b"")], ""),
    ],
)
def test_bearer_reads_one_short_ascii_token_and_nothing_else(headers, expected):
    assert bearer(headers) == expected


def test_a_burst_from_one_key_is_cut_at_its_bucket_while_others_go_on(settings, tmp_path):
    writer, writer_entry = new_key("writer", {"write"})
    other, other_entry = new_key("other", {"write", "score"})
    entries = f"{writer_entry.line()};{other_entry.line()}"
    app = create_app(changed(settings, api_keys=entries, write_rate=0.001, write_burst=20))
    with TestClient(app) as client:
        codes = [call(client, "/events", writer).status_code for _ in range(50)]
        assert codes.count(200) == 20 and codes.count(429) == 30
        r = call(client, "/events", writer)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["detail"][0]["loc"] == ["body", "events"]
        assert call(client, "/events", other).status_code == 200  # another key's bucket
        assert call(client, "/score", other).status_code == 200  # scoring is not a write
        big = {"events": [{"user_id": 7, "item_id": i, "category_id": 1} for i in range(21)]}
        r = client.post("/events", json=big, headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 422 and "DIN_WRITE_BURST" in r.json()["detail"][0]["msg"]
        assert 'din_rate_limited_total{key="writer"} 31.0' in client.get("/metrics").text


def test_the_bucket_refills_at_the_rate():
    clock = [0.0]
    limit = auth.WriteLimit(rate=10, burst=5, metrics=Metrics(), clock=lambda: clock[0])
    limit.take("k", 5, ())
    with pytest.raises(RateLimited) as e:
        limit.take("k", 3, ())
    assert e.value.retry_after == 1
    clock[0] += 0.3  # three tokens back
    limit.take("k", 3, ())
