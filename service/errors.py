"""The service's domain errors and, in one place, the HTTP status each maps to.

Every error answer has one shape, ``{"detail": [{"loc", "msg", "type"}]}``: ``loc`` names the field
(``["body", "candidates", 3, "item_id"]``), ``msg`` states the rule, and nothing the client sent is
echoed back (a raw body may not even be text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

MAX_LOC_TEXT = 64
REALM = "din-serve"  # a client-chosen key is named in ``loc``, cut to this length


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[ErrorDetail]


class ServiceError(Exception):
    status_code = 500
    kind = "internal_error"

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.message, self.loc = message, loc


class InvalidInput(ServiceError):
    status_code, kind = 422, "invalid_input"


class InvalidBody(InvalidInput):
    """Several field errors at once, as pydantic reports them (already made safe to send)."""

    def __init__(self, details: list[dict[str, Any]]):
        super().__init__(details[0]["msg"], tuple(details[0]["loc"]))
        self.details = details

    @classmethod
    def from_errors(cls, errors: Iterable[Mapping[str, Any]], prefix: tuple[str, ...] = ()) -> InvalidBody:
        return cls([safe_detail(e, prefix) for e in errors])


# One small class per kind of answer, its status and kind side by side: the classes look alike on
# purpose (`duplicates` lists them as one shape), since the tree is what the handlers match on.
class UnsupportedMediaType(ServiceError):
    status_code, kind = 415, "unsupported_media_type"


class StoreUnavailable(ServiceError):
    """A write could not reach Redis: never reported as done."""

    status_code, kind = 503, "store_unavailable"


class Unauthorized(ServiceError):
    status_code, kind = 401, "unauthorized"


class Forbidden(ServiceError):
    """A valid key without the scope the route needs."""

    status_code, kind = 403, "forbidden"


class RateLimited(ServiceError):
    """One key's writes past its rate; ``retry_after`` seconds until they fit again."""

    status_code, kind = 429, "rate_limited"

    def __init__(self, message: str, loc: tuple[str | int, ...], retry_after: int):
        super().__init__(message, loc)
        self.retry_after = retry_after


class Disabled(ServiceError):
    status_code, kind = 404, "disabled"


class PayloadTooLarge(ServiceError):
    status_code, kind = 413, "payload_too_large"


class Overloaded(ServiceError):
    """Admission control: too many requests in flight in this process."""

    status_code, kind = 503, "overloaded"


class DeadlineExceeded(ServiceError):
    """The request waited past its deadline; it is dropped rather than answered late."""

    status_code, kind = 503, "deadline_exceeded"


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token", "model": ErrorBody},
    403: {"description": "the key lacks the scope this needs, or no keys are configured", "model": ErrorBody},
    404: {"description": "disabled", "model": ErrorBody},
    413: {"description": "body too large", "model": ErrorBody},
    415: {"description": "the body is not declared as JSON", "model": ErrorBody},
    422: {"description": "invalid input; `loc` names the field", "model": ErrorBody},
    429: {"description": "this key's writes are past its rate; see Retry-After", "model": ErrorBody},
    503: {
        "description": "overloaded, past its deadline, or the store is down; see Retry-After",
        "model": ErrorBody,
    },
}


def errors_of(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route, for its OpenAPI entry."""
    return {code: ERROR_RESPONSES[code] for code in codes}


def error_body(exc: ServiceError) -> dict[str, Any]:
    if isinstance(exc, InvalidBody):
        return {"detail": exc.details}
    return {"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": exc.kind}]}


def safe_detail(error: Mapping[str, Any], prefix: Sequence[str] = ()) -> dict[str, Any]:
    """A pydantic or FastAPI error without its ``input`` and ``ctx`` (they carry the client's
    values), with long client-chosen keys in ``loc`` cut short."""
    loc = [_short(part) for part in (*prefix, *error["loc"])]
    if error["type"] == "json_invalid":  # one wording for every body that does not parse
        reason = error.get("ctx", {}).get("error", "")
        return {
            "loc": loc or ["body"],
            "msg": f"the body is not valid JSON: {reason}",
            "type": "json_invalid",
        }
    return {"loc": loc, "msg": str(error["msg"]), "type": str(error["type"])}


def _short(part: Any) -> str | int:
    if isinstance(part, int):
        return part
    text = str(part)
    return text if len(text) <= MAX_LOC_TEXT else text[: MAX_LOC_TEXT - 1] + "…"


def error_headers(exc: ServiceError) -> dict[str, str]:
    if exc.status_code == 503:
        return {"Retry-After": "1"}
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    if exc.status_code == 401:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
    return {}


async def send_error(send: Send, exc: ServiceError) -> None:
    """The same answer as the exception handler, from ASGI middleware (outside FastAPI)."""
    body = orjson.dumps(error_body(exc))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI, on_error: Callable[[ServiceError], None] = lambda _: None) -> None:
    """Maps every ServiceError to its answer, in one place; ``on_error`` sees each one (metrics)."""

    @app.exception_handler(ServiceError)
    async def handle(_: Request, exc: ServiceError) -> JSONResponse:
        on_error(exc)
        return JSONResponse(error_body(exc), status_code=exc.status_code, headers=error_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        """Query and header parameters FastAPI validates; bodies are parsed in ``service.body``."""
        return await handle(request, InvalidBody.from_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Framework errors (404, 405) in the same shape."""
        body = {"detail": [{"loc": [], "msg": str(exc.detail), "type": f"http_{exc.status_code}"}]}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
