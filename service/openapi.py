"""/openapi.json with the loaded model's real request contract.

The pydantic request models accept any feature names; which ones a model requires and takes, and
whether each is an integer or a string, is known only once a bundle is loaded. This narrows the
three request bodies to that: required candidate and event fields with their types, the allowed
profile and context keys, and the per-request limits. So a client or a fuzzer that sends what the
schema allows is not refused, and one that sends what it forbids is. Rebuilt when the version
changes (hot reload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from contracts.ids import ANY_ID_SCHEMA, INT_MAX, INT_MIN
from service.auth import ROUTE_SCOPES
from service.errors import errors_of
from service.features import Features
from service.settings import Settings


def features_object(
    features: Features, names: tuple[str, ...], required: bool, **extra: Any
) -> dict[str, Any]:
    """An object of the named features, each by its rule; others refused unless ``extra`` says otherwise."""
    out: dict[str, Any] = {
        "type": "object",
        "properties": {n: features.rules[n].json_schema() for n in names},
        "additionalProperties": False,
    }
    if required:
        out["required"] = list(names)
    return out | extra


def narrow(paths: dict[str, Any], features: Features, settings: Settings) -> None:
    s = features.schema
    behavior = features_object(features, s.behavior, required=True, additionalProperties=ANY_ID_SCHEMA)

    def body(path: str) -> dict[str, Any]:
        return paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]

    score = body("/score")["properties"]
    score["candidates"] = {"type": "array", "items": behavior, "maxItems": settings.max_candidates}
    # Keys this model does not take are accepted and listed in the answer's "ignored", so a
    # client keeps working across versions with other features.
    for key, group in (("context", s.context), ("user", s.profile)):
        taken = features_object(features, group, required=False, additionalProperties=ANY_ID_SCHEMA)
        score[key] = {"anyOf": [taken, {"type": "null"}]} | {"description": score[key].get("description", "")}

    events = body("/events")
    event = features_object(features, s.behavior, required=True, additionalProperties=ANY_ID_SCHEMA)
    event["properties"] = {"user_id": ANY_ID_SCHEMA, **event["properties"]}
    event["properties"]["ts"] = events["$defs"]["Event"]["properties"]["ts"]
    event["required"] = ["user_id", *event["required"]]
    events["properties"]["events"] = {
        "type": "array",
        "items": event,
        "minItems": 1,
        "maxItems": settings.max_events,
    }
    events.pop("$defs")

    profile = body("/profile")["properties"]
    profile["profile"] = features_object(
        features, s.profile, required=False, minProperties=1, additionalProperties=ANY_ID_SCHEMA
    )


def exact_bounds(node: Any) -> None:
    """FastAPI's OpenAPI model stores bounds as floats, and float(2**63 - 1) is 2**63, one past the
    largest id; this puts the exact integers back."""
    if isinstance(node, dict):
        for key, exact in (("maximum", INT_MAX), ("minimum", INT_MIN)):
            if isinstance(node.get(key), float) and node[key] == float(exact):
                node[key] = exact
        for value in node.values():
            exact_bounds(value)
    elif isinstance(node, list):
        for value in node:
            exact_bounds(value)


def secured(spec: dict[str, Any]) -> None:
    """With API keys configured: the bearer scheme, and on each protected route the scope it needs
    and its 401 and 403 answers."""
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {})["APIKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key, `<id>.<secret>` (python -m jobs.api_keys new)",
    }
    for path, scope in ROUTE_SCOPES.items():
        operation = spec["paths"][path]["post"]
        operation["security"] = [{"APIKey": []}]
        operation["description"] = (
            operation.get("description", "") + f"\n\nNeeds an API key with the `{scope}` scope."
        )
        for code, response in errors_of(401, 403).items():
            schema = {"$ref": "#/components/schemas/ErrorBody"}
            content = {"application/json": {"schema": schema}}
            operation["responses"][str(code)] = {"description": response["description"], "content": content}


def model_openapi(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    cache: dict[str, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        services = getattr(app.state, "services", None)  # None before the lifespan has run
        runner = services.models.runner if services is not None else None
        version = runner.version if runner is not None else ""
        if version not in cache:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            exact_bounds(spec)
            if settings.api_keys is not None or settings.api_keys_file is not None:
                secured(spec)
            if runner is not None:
                narrow(spec["paths"], runner.features, settings)
                spec["info"]["description"] += f" Request schemas are those of model {version}."
            cache.clear()
            cache[version] = spec
        return cache[version]

    return openapi
