"""Request and response bodies. Feature fields beyond the common ones are free-form here and are
checked against the loaded model's schema in ``service.runner``, naming the offending field.
Every id follows one rule (``contracts.ids``); nothing is coerced, and an unknown top-level field is
refused, so a typo such as ``topk`` is a 422 instead of being silently ignored."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema

from contracts.ids import ANY_ID_SCHEMA, RawId, RequestId, WholeNumber

# A candidate ad: its feature ids by name. A plain mapping, not a model: validating a few hundred
# model instances per request cost more than the model run. item_id and the model's other ad fields
# are checked per column against the loaded schema (service.ranking.candidate_rows).
Candidate = Annotated[
    dict[str, RawId],
    WithJsonSchema(
        {
            "type": "object",
            "title": "Candidate",
            "properties": {"item_id": ANY_ID_SCHEMA},
            "required": ["item_id"],
            "additionalProperties": ANY_ID_SCHEMA,
            "example": {"item_id": 2, "category_id": 16},
        }
    ),
]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "user_id": 1,
                "candidates": [{"item_id": 2, "category_id": 16}, {"item_id": 8121, "category_id": 145}],
                "top_k": 10,
                "explain": False,
            }
        },
    )

    user_id: RawId
    candidates: list[Candidate]
    context: dict[str, RawId] | None = Field(
        None, description="context features; derived from the time if absent"
    )
    user: dict[str, RawId] | None = Field(None, description="profile features; read from Redis if absent")
    top_k: Annotated[int, WholeNumber(ge=1)] | None = Field(
        None, description="return the best k (default: all)"
    )
    explain: StrictBool = Field(
        False,
        description="add the history scored, and per item the attention weight and the influence on "
        "its CTR of every behaviour, and the behaviours that moved it most",
    )
    request_id: RequestId | None = Field(
        None,
        description="ties this answer's impressions to later clicks; else the X-Request-Id header, "
        "else one is made",
    )


class Behavior(BaseModel):
    model_config = ConfigDict(extra="allow")

    item_id: RawId
    weight: float = Field(description="the activation unit's raw attention weight")
    influence: float = Field(
        description="the item's CTR with the whole history minus its CTR without this behaviour"
    )


class ScoredItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    item_id: RawId
    ctr: float
    rank: int
    explored: bool | None = Field(None, description="true when exploration put this item here")
    behaviors: list[Behavior] | None = Field(
        None, description="with explain: the behaviours that moved the CTR most, by |influence|"
    )
    attention: list[float] | None = Field(None, description="with explain: per behaviour of history")
    influence: list[float] | None = Field(None, description="with explain: per behaviour of history")


# An answer of the quickstart's model, so /docs shows real values instead of ones generated from
# the id schema's bounds.
SCORE_EXAMPLE: dict[str, Any] = {
    "request_id": "7298c732756eab06494b3fbcfe82592d",
    "model_version": "20261207-220817",
    "user_id": 1,
    "degraded": False,
    "history_length": 2,
    "history": [{"item_id": 710, "category_id": 8, "ts": 33}, {"item_id": 1449, "category_id": 8, "ts": 57}],
    "items": [
        {
            "item_id": 77, "category_id": 12, "ctr": 0.0957, "rank": 1,
            "behaviors": [
                {"item_id": 1449, "category_id": 8, "ts": 57, "weight": -0.0381, "influence": -0.0147}
            ],
            "attention": [-0.0278, -0.0381], "influence": [-0.00059, -0.0147],
        },
        {"item_id": 5, "category_id": 3, "ctr": 0.0574, "rank": 2},
    ],
}  # fmt: skip


class ScoreResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": SCORE_EXAMPLE})

    request_id: str = Field(description="the request's id (as sent, or made); also the X-Request-Id header")
    model_version: str
    user_id: RawId
    history_length: int
    degraded: bool = Field(description="true when the behaviour store could not be read in time")
    ignored: list[str] | None = Field(
        None,
        description="profile and context keys sent that this model does not take (`user.<key>`, "
        "`context.<key>`): accepted and left out of the score; absent when there were none",
    )
    history: list[dict[str, Any]] | None = Field(
        None, description="with explain: the behaviours scored, oldest first"
    )
    items: list[ScoredItem]


class Event(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"example": {"user_id": 1, "item_id": 2, "category_id": 16, "ts": 1764000000}},
    )
    __pydantic_extra__: dict[str, RawId]  # other behaviour fields: ids only, so Redis holds ids only

    user_id: RawId
    item_id: RawId
    ts: Annotated[int, WholeNumber(ge=0)] | None = Field(
        None, description="unix seconds; the server's time if absent"
    )
    request_id: RequestId | None = Field(
        None, description="the `/score` answer that showed this item, to attribute the click to"
    )


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1)


class EventsResponse(BaseModel):
    appended: int
    users: int


class ProfileRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"user_id": 1, "profile": {"age": 25, "gender": "F"}}}
    )

    user_id: RawId
    profile: dict[str, RawId] = Field(min_length=1)


MAX_ERASE_USERS = 1000


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"users": [42, "anna"]}})

    users: list[RawId] = Field(min_length=1, max_length=MAX_ERASE_USERS, description="the users to forget")


class ErasureResponse(BaseModel):
    users: int = Field(description="users in the request")
    keys_deleted: dict[str, int] = Field(description="history and profile keys deleted")
    stream_entries_deleted: dict[str, int] = Field(
        description="entries deleted per stream: impressions, clicks, shadow, deadletters"
    )
    tombstones: int = Field(
        description="users newly tombstoned (the export drops their records, now and later)"
    )


def extra_fields(model: BaseModel) -> dict[str, Any]:
    return dict(model.model_extra or {})
