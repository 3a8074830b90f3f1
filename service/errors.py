"""The service's domain errors and, in one place, the HTTP status each maps to."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ServiceError(Exception):
    status_code = 500
    kind = "internal_error"

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.message, self.loc = message, loc


class InvalidInput(ServiceError):
    status_code, kind = 422, "invalid_input"


class StoreUnavailable(ServiceError):
    """A write could not reach Redis: never reported as done."""

    status_code, kind = 503, "store_unavailable"


class Unauthorized(ServiceError):
    status_code, kind = 401, "unauthorized"


class Disabled(ServiceError):
    status_code, kind = 404, "disabled"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def handle(_: Request, exc: ServiceError) -> JSONResponse:
        body = {"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": exc.kind}]}
        headers = {"Retry-After": "1"} if exc.status_code == 503 else None
        if exc.status_code == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)
