"""GET /ui: the explain page (service/ui/), served by the service itself: three small hand-written
files, read once, and a content security policy that lets the page load nothing from elsewhere."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response

router = APIRouter(tags=["explain page"])
ASSETS = {"index.html": "text/html", "ui.js": "text/javascript", "ui.css": "text/css"}
_BODIES = {name: (files("service") / "ui" / name).read_bytes() for name in ASSETS}
HEADERS = {"Content-Security-Policy": "default-src 'self'", "Cache-Control": "no-cache"}


def _asset(name: str) -> Response:
    return Response(_BODIES[name], media_type=f"{ASSETS[name]}; charset=utf-8", headers=HEADERS)


@router.get("/ui", response_class=Response, responses={200: {"content": {"text/html": {}}}})
async def page() -> Response:
    """The explain page: rank candidates for a user, and see which behaviours moved each ad."""
    return _asset("index.html")


@router.get("/ui/ui.js", include_in_schema=False)
async def script() -> Response:
    return _asset("ui.js")


@router.get("/ui/ui.css", include_in_schema=False)
async def style() -> Response:
    return _asset("ui.css")
