"""Request bodies for every JSON route, parsed and validated in one pass by pydantic-core.

FastAPI's own body path (``json.loads``, then validation of the Python objects) costs about three
times as much on a few hundred candidates, and on a body that is not JSON it renders the raw bytes
into its error, which fails on bytes that are not UTF-8. Here every route gets the same rules:
a declared content type other than JSON is a 415, a body that does not parse is a 422 on
``["body"]``, and field errors are 422s naming the field, with nothing of the input echoed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from service.errors import InvalidBody, UnsupportedMediaType, errors_of

M = TypeVar("M", bound=BaseModel)
NOT_UTF8 = {"loc": ["body"], "msg": "the body is not UTF-8 encoded JSON", "type": "json_invalid"}


def is_json_content_type(value: str | None) -> bool:
    """No header is taken as JSON (as FastAPI does); otherwise application/json or a +json type."""
    if value is None:
        return True
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def parse(model: type[M], raw: bytes, content_type: str | None) -> M:
    if not is_json_content_type(content_type):
        raise UnsupportedMediaType(
            "the body must be JSON, sent with Content-Type: application/json", ("header", "content-type")
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False, include_context=True)
        if any(err["type"] == "json_invalid" for err in errors) and not _is_utf8(raw):
            raise InvalidBody([dict(NOT_UTF8)]) from None
        raise InvalidBody.from_errors(errors, ("body",)) from None


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A FastAPI dependency that yields the route's body as ``model``."""

    async def dependency(request: Request) -> M:
        return parse(model, await request.body(), request.headers.get("content-type"))

    return dependency


def json_route(
    model: type[BaseModel],
    parameters: Sequence[dict[str, Any]] = (),
    rate_limited: bool = False,
    **route: Any,
) -> dict[str, Any]:
    """The ``router.post`` arguments of a route whose body ``parse(model, ...)`` reads: its errors,
    and the body's schema, which FastAPI cannot see (``service.openapi`` narrows it to the loaded
    model's features); plus the OpenAPI ``parameters`` of a route that reads them itself."""
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    extra: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }
    if parameters:
        extra["parameters"] = list(parameters)
    codes = (413, 415, 422, 429, 503) if rate_limited else (413, 415, 422, 503)
    return {"responses": errors_of(*codes), "openapi_extra": extra, **route}


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
