"""One rule for ids and bodies on every endpoint: checked at the edge, nothing coerced or echoed,
one error shape. Each case here was a 500, a silent coercion or an echo before (issue 15)."""

import orjson
import pytest
import redis

from contracts.keys import Keys
from service.payloads import ScoreResponse
from tests.helpers import REDIS_URL, stored_keys

BIG = 2**70
OK = {"item_id": 1, "category_id": 1}
ENDPOINTS = ("/score", "/events", "/profile")


def history_length(client, user_id) -> int:
    r = client.post("/score", json={"user_id": user_id, "candidates": [OK]})
    assert r.status_code == 200, r.text
    return r.json()["history_length"]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        (
            "/score",
            {"user_id": 1, "candidates": [{"item_id": BIG, "category_id": 1}]},
            ["candidates", 0, "item_id"],
        ),
        ("/score", {"user_id": BIG, "candidates": [OK]}, ["user_id"]),
        ("/score", {"user_id": 1, "candidates": [OK], "user": {"age": BIG}}, ["user", "age"]),
        ("/score", {"user_id": 1, "candidates": [OK], "context": {"hour": -BIG}}, ["context", "hour"]),
        ("/events", {"events": [{"user_id": 1, "item_id": BIG, "category_id": 1}]}, ["events", 0, "item_id"]),
        ("/events", {"events": [{"user_id": BIG, "item_id": 1, "category_id": 1}]}, ["events", 0, "user_id"]),
        (
            "/events",
            {"events": [{"user_id": 1, "item_id": 1, "category_id": 1, "ts": BIG}]},
            ["events", 0, "ts"],
        ),
        ("/profile", {"user_id": 1, "profile": {"age": BIG}}, ["profile", "age"]),
        ("/profile", {"user_id": BIG, "profile": {"age": 3}}, ["user_id"]),
        ("/profile", {"user_id": 1, "profile": {"age": -(2**63) - 1}}, ["profile", "age"]),  # one past
        ("/score", {"user_id": 2**63, "candidates": [OK]}, ["user_id"]),
        ("/score", {"user_id": 1, "candidates": [OK], "top_k": 2**63}, ["top_k"]),
    ],
)
def test_integers_beyond_64_bits_are_a_422_naming_the_field_and_store_nothing(
    client, settings, path, body, loc
):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", *loc]
    assert str(BIG) not in r.text
    assert stored_keys(settings.key_prefix) == []


def test_the_largest_and_smallest_64_bit_ids_are_taken(client):
    for user_id in (2**63 - 1, -(2**63)):
        r = client.post(
            "/events", json={"events": [{"user_id": user_id, "item_id": 2**63 - 1, "category_id": -(2**63)}]}
        )
        assert r.status_code == 200, r.text
        assert history_length(client, user_id) == 1


def test_a_stored_record_beyond_64_bits_or_not_json_scores_instead_of_failing(client, settings):
    keys = Keys(settings.key_prefix)
    r = redis.Redis.from_url(REDIS_URL)
    r.rpush(
        keys.history(5), orjson.dumps({"item_id": 3, "category_id": 3}), b'{"item_id": %d}' % BIG, b"\xff{"
    )
    r.hset(keys.profile(5), mapping={"age": b"%d" % BIG, "gender": b"not json"})
    r.close()
    assert history_length(client, 5) == 2  # the record that is not JSON is skipped


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_bodies_that_are_not_utf8_are_one_422_on_body_on_every_endpoint(client, path, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(path, content=b"\xff\xfe{\x00\x9c", headers=headers)
    assert r.status_code == 422, r.text
    assert r.json() == {
        "detail": [{"loc": ["body"], "msg": "the body is not UTF-8 encoded JSON", "type": "json_invalid"}]
    }


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_declared_as_anything_but_json_is_a_415(client, path, content_type):
    r = client.post(path, content=b"\xff\xfe user_id=1", headers={"content-type": content_type})
    assert r.status_code == 415, r.text
    assert r.json()["detail"][0]["loc"] == ["header", "content-type"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_malformed_json_has_the_same_error_on_every_endpoint(client, path):
    r = client.post(path, content=b'{"user_id": 1,', headers={"content-type": "application/json"})
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body"] and detail["type"] == "json_invalid"
    assert detail["msg"].startswith("the body is not valid JSON: ")


MARK = "zz-raw-input-marker-zz"


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/score", f"a={MARK}&b=2"),
        ("/score", f'{{"user_id": 1, "candidates": [{{"item_id": ["{MARK}"], "category_id": 1}}]}}'),
        ("/score", f'{{"user_id": 1, "candidates": [{{"item_id": 1, "category_id": "{MARK}"}}]}}'),
        ("/score", f'{{"user_id": 1, "candidates": [], "top_k": "{MARK}"}}'),
        ("/events", f'{{"events": [{{"user_id": 1, "item_id": "{MARK}", "category_id": 1}}]}}'),
        ("/events", f'{{"events": [{{"user_id": {{"x": "{MARK}"}}, "item_id": 1, "category_id": 1}}]}}'),
        ("/events", f"{MARK}"),
        ("/profile", f'{{"user_id": 1, "profile": {{"gender": 7, "age": "{MARK}"}}}}'),
        ("/profile", f'{{"user_id": 1, "profile": {{"age": 1}}, "note": "{MARK}"}}'),
    ],
)
def test_errors_never_echo_the_input(client, path, raw):
    r = client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert MARK not in r.text and "input" not in r.json()["detail"][0]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"user_id": 1, "candidates": [OK], "topk": 1}, ["body", "topk"]),
        (
            {"user_id": 1, "candidates": [{"item_id": True, "category_id": 1}]},
            ["body", "candidates", 0, "item_id"],
        ),
        (
            {"user_id": 1, "candidates": [{"item_id": 1.5, "category_id": 1}]},
            ["body", "candidates", 0, "item_id"],
        ),
        (
            {"user_id": 1, "candidates": [{"item_id": "5", "category_id": 1}]},
            ["body", "candidates", 0, "item_id"],
        ),
        ({"user_id": 1, "candidates": [OK], "top_k": "3"}, ["body", "top_k"]),
        ({"user_id": 1, "candidates": [OK], "explain": "yes"}, ["body", "explain"]),
        ({"user_id": 1, "candidates": [OK], "explain": 0}, ["body", "explain"]),
        ({"user_id": "", "candidates": [OK]}, ["body", "user_id"]),
        ({"user_id": "x" * 257, "candidates": [OK]}, ["body", "user_id"]),
        ({"user_id": True, "candidates": [OK]}, ["body", "user_id"]),
    ],
)
def test_score_coerces_nothing_and_refuses_unknown_fields(client, body, loc):
    r = client.post("/score", json=body)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == loc
    assert not {"int", "str"} & {str(part) for part in detail["loc"]}  # no union tags posing as fields


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/events", {"events": [{"user_id": 1, "item_id": 2, "category_id": 3}], "extra": 1}),
        ("/events", {"events": [{"user_id": 1, "item_id": 2, "category_id": 3, "ts": "5"}]}),
        ("/events", {"events": [{"user_id": 1, "item_id": 2, "category_id": 3, "ts": 1.5}]}),
        ("/events", {"events": [{"user_id": "", "item_id": 2, "category_id": 3}]}),
        ("/profile", {"user_id": 1, "profile": {"age": 3}, "extra": 1}),
        ("/profile", {"user_id": 1, "profile": {"age": True}}),
    ],
)
def test_writes_coerce_nothing_refuse_unknown_fields_and_store_nothing(client, settings, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert stored_keys(settings.key_prefix) == []


def test_integer_and_string_user_ids_are_different_users(client):
    r = client.post("/events", json={"events": [{"user_id": "7", "item_id": 2, "category_id": 3}]})
    assert r.status_code == 200
    assert history_length(client, "7") == 1 and history_length(client, 7) == 0


def test_openapi_publishes_the_loaded_models_request_contract(client, settings):
    spec = client.get("/openapi.json").json()

    def body(path):
        return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]

    score = body("/score")
    candidate = score["properties"]["candidates"]["items"]
    assert candidate["required"] == ["item_id", "category_id"]
    assert candidate["properties"]["item_id"]["type"] == "integer"
    assert candidate["properties"]["item_id"]["maximum"] == 2**63 - 1  # exact, not a float past it
    assert score["properties"]["candidates"]["maxItems"] == settings.max_candidates
    assert score["additionalProperties"] is False
    any_id = {"anyOf": [{"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                        {"type": "string", "minLength": 1, "maxLength": 256}]}  # fmt: skip
    user = score["properties"]["user"]["anyOf"][0]
    assert set(user["properties"]) == {"age", "gender"} and user["additionalProperties"] == any_id
    assert user["properties"]["gender"]["type"] == "string"
    context = score["properties"]["context"]["anyOf"][0]["properties"]
    assert (context["hour"]["minimum"], context["hour"]["maximum"]) == (0, 23)
    assert (context["weekday"]["minimum"], context["weekday"]["maximum"]) == (0, 6)
    event = body("/events")["properties"]["events"]["items"]
    assert event["required"] == ["user_id", "item_id", "category_id"]
    profile = body("/profile")["properties"]["profile"]
    assert set(profile["properties"]) == {"age", "gender"} and profile["additionalProperties"] == any_id
    for path in ("/score", "/events", "/profile"):
        assert {"413", "415", "422", "503"} <= set(spec["paths"][path]["post"]["responses"])
    tags = {path: op["tags"] for path, ops in spec["paths"].items() for op in ops.values()}
    assert tags["/score"] == ["scoring"] and tags["/events"] == tags["/profile"] == ["behaviours"]
    assert all(tags.values())  # nothing listed under "default" in /docs
    example = spec["components"]["schemas"]["ScoreResponse"]["example"]
    assert ScoreResponse.model_validate(example).user_id == 1  # a real answer, not the schema's bounds


def test_profile_and_context_keys_the_model_does_not_take_are_ignored_and_named_in_the_answer(client):
    """A client written for another version of the model (one with other profile or context
    features) is not refused when the model behind the endpoint changes."""
    candidates = [{"item_id": 3, "category_id": 2}, {"item_id": 8, "category_id": 5}]
    taken = {"user_id": 1, "candidates": candidates, "user": {"age": 25}, "context": {"hour": 3}}
    plain = client.post("/score", json=taken)
    extra = client.post(
        "/score",
        json=taken | {"user": {"age": 25, "shoe_size": 44}, "context": {"hour": 3, "season": "winter"}},
    )
    assert plain.status_code == extra.status_code == 200, extra.text
    assert "ignored" not in plain.json()
    assert extra.json()["ignored"] == ["context.season", "user.shoe_size"]
    assert [i["ctr"] for i in extra.json()["items"]] == [i["ctr"] for i in plain.json()["items"]]


def test_a_profile_key_the_model_does_not_take_is_stored_for_the_versions_that_do(client, settings):
    assert (
        client.post("/profile", json={"user_id": 4, "profile": {"age": 25, "income": "high"}}).status_code
        == 204
    )
    with redis.Redis.from_url(REDIS_URL) as r:
        stored = r.hgetall(Keys(settings.key_prefix).profile(4))
    assert {k: orjson.loads(v) for k, v in stored.items()} == {b"age": 25, b"income": "high"}


def test_a_whole_number_written_as_a_float_is_that_integer_as_json_schema_says(client):
    as_int = client.post("/score", json={"user_id": 1, "candidates": [{"item_id": 3, "category_id": 2}]})
    as_float = client.post(
        "/score", json={"user_id": 1.0, "candidates": [{"item_id": 3.0, "category_id": 2.0}], "top_k": 1.0}
    )
    assert as_float.status_code == 200, as_float.text
    assert as_float.json()["items"][0]["ctr"] == as_int.json()["items"][0]["ctr"]
    assert as_float.json()["items"][0]["item_id"] == 3 and as_float.json()["user_id"] == 1
