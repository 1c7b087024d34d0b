"""The simulate routes ahead of FastAPI's routing. FastAPI's route matching, dependency injection
and exception middleware cost about as much event-loop time again as a single-particle request's
own work (read, validate, queue, answer), on the one thread that bounds a server flooded with
single particles (docs/benchmarks.md). This middleware sits inside the metrics one and calls the
endpoints of the routes marked `endpoint.fast_lane = True` itself, matched by the routes' own
matching (so the path, its parameters and `scope["route"]` are what FastAPI would give), and
answers client errors as the app's exception handlers do. A marked route may take only the request
and its path parameters: one that gains a query, body or dependency parameter is refused at start
rather than silently served without it."""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Match

from .errors import error_response


def fast_routes(routes) -> list[APIRoute]:
    """The app's routes marked for the fast lane; ValueError for one the lane cannot call as FastAPI would."""
    marked = [r for r in routes if isinstance(r, APIRoute) and getattr(r.endpoint, "fast_lane", False)]
    for route in marked:
        d = route.dependant
        if d.query_params or d.header_params or d.cookie_params or d.body_params or d.dependencies:
            raise ValueError(f"route {route.path} is marked for the fast lane but takes more than the request and "
                             f"its path parameters; expected an endpoint(request, **path_params)")
    return marked


class FastLane:
    def __init__(self, app, routes):
        self.app = app
        self.routes = fast_routes(routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                break
        else:
            return await self.app(scope, receive, send)
        scope.update(child)  # path_params, endpoint and route, as FastAPI's router sets them
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request=request, **child["path_params"])
        except Exception as exc:  # errors a client caused get their 4xx, others go on to a 500
            response = error_response(exc)
            if response is None:
                raise
        await response(scope, receive, send)
