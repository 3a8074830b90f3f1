"""The dependencies the routes take: the app's services (``service.services``) and the checked
JSON bodies. POST /score, the hot path, reads the services itself (service.routes.score).

The getter is async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, and a
thread hop per request costs more than the rest of the request's Python."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import caller_id
from service.body import json_body
from service.payloads import ErasureRequest, EventsRequest, ProfileRequest
from service.services import Services, services_of


async def get_services(request: Request) -> Services:
    return services_of(request)


async def get_caller_id(request: Request) -> str:
    """The id of the caller's API key ("-" when no keys are configured)."""
    return caller_id(request.scope)


ServicesDep = Annotated[Services, Depends(get_services)]
CallerId = Annotated[str, Depends(get_caller_id)]
EventsBody = Annotated[EventsRequest, Depends(json_body(EventsRequest))]
ProfileBody = Annotated[ProfileRequest, Depends(json_body(ProfileRequest))]
ErasureBody = Annotated[ErasureRequest, Depends(json_body(ErasureRequest))]
