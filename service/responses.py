"""Every answer counted by route and status code (``din_http_responses_total``): the request rate
of the dashboard and the 5xx alert (deploy/).

Outermost of the service's middleware, so it also counts what admission control and the body limit
refuse, and an exception no handler caught as the 500 it becomes. The route label is the app's
path for a known route and ``other`` for anything else, so requests for random paths cannot grow
the label set.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


class ResponseCounter:
    def __init__(self, app: ASGIApp, routes: set[str], metrics: Metrics):
        self.app, self.routes, self.metrics = app, routes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: an exception on its way to the server's 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.responses.labels(route=route, code=str(status)).inc()
