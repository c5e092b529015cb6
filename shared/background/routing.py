"""The route class that hands each response's background tasks to the executor, and the
start-up pass that gives it to every route of an app, however the route was declared."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

from fastapi._body_limit import wrap_app_with_body_limit
from fastapi.routing import APIRoute, request_response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount


class TaskRoute(APIRoute):
    """An ``APIRoute`` whose response runs its tasks through ``app.state.task_executor``.

    Endpoints keep FastAPI's plain ``BackgroundTasks`` API; only what runs the tasks
    after the response changes.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_with_executor(request: Request) -> Response:
            response = await handle(request)
            if response.background is not None:
                executor = getattr(request.app.state, "task_executor", None)
                if executor is not None:
                    response.background = executor.take(response.background)
            return response

        return handle_with_executor


class UnmanagedRouteError(RuntimeError):
    """A route whose background tasks the task layer cannot take over."""


_task_route_classes: dict[type[APIRoute], type[TaskRoute]] = {}


def task_route_class(route_class: type[APIRoute]) -> type[TaskRoute]:
    """``route_class`` with ``TaskRoute`` around its handler (a router's own ``route_class`` keeps working)."""
    if issubclass(route_class, TaskRoute):
        return route_class
    if route_class not in _task_route_classes:
        name = f"Task{route_class.__name__}"
        _task_route_classes[route_class] = type(name, (TaskRoute, route_class), {"__module__": route_class.__module__})
    return _task_route_classes[route_class]


def _walk(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute, Any]]:
    """Every route with the router holding it, through included routers and mounted routers."""
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router entry
        if included is not None:
            yield from ((where, inner, owner or included) for where, inner, owner in _walk(included.routes, prefix))
        elif isinstance(route, Mount) and not isinstance(route.app, Starlette) and route.routes:
            yield from _walk(route.routes, prefix + route.path)
        else:
            yield prefix + str(getattr(route, "path", "")), route, None


def unmanaged_routes(routes: Iterable[BaseRoute]) -> list[str]:
    """The paths of API routes that do not run their tasks through the layer yet."""
    return [
        where for where, route, _ in _walk(routes) if isinstance(route, APIRoute) and not isinstance(route, TaskRoute)
    ]


def manage_routes(routes: Iterable[BaseRoute]) -> None:
    """Give every API route in ``routes`` (included routers at any depth too) the task layer.

    A route of a plain ``APIRouter``, or of a router with its own ``route_class``, becomes
    an instance of that class with ``TaskRoute`` around its handler. A mounted app without
    the layer cannot be reached from here: ``UnmanagedRouteError`` names it.
    """
    changed: dict[int, Any] = {}
    for where, route, owner in _walk(routes):
        if isinstance(route, Mount) and isinstance(route.app, Starlette):
            if not hasattr(route.app.state, "task_executor"):
                raise UnmanagedRouteError(
                    f"the app mounted at {where} runs its background tasks without the task layer: "
                    "build it with shared.app.create_app() or call shared.background.install.install() on it"
                )
        elif isinstance(route, APIRoute) and not isinstance(route, TaskRoute):
            try:
                route.__class__ = task_route_class(type(route))
            except TypeError as exc:
                raise UnmanagedRouteError(
                    f"route {where} ({type(route).__qualname__}) cannot run its tasks through the task layer: {exc}; "
                    "declare it on an APIRouter whose route_class derives from APIRoute"
                ) from exc
            route.app = wrap_app_with_body_limit(request_response(route.get_route_handler()), route.max_body_size)
            if owner is not None:
                changed[id(owner)] = owner
    for router in changed.values():
        # Included routers cache a handler per route; a new version rebuilds them.
        mark_changed = getattr(router, "_mark_routes_changed", None)
        if mark_changed is not None:
            mark_changed()
    for router in _included_routers(routes):
        # Routes its decorators declare from now on, even once the app serves, get the layer too.
        if isinstance(router.route_class, type) and issubclass(router.route_class, APIRoute):
            router.route_class = task_route_class(router.route_class)


def _included_routers(routes: Iterable[BaseRoute]) -> Iterator[Any]:
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield included
            yield from _included_routers(included.routes)
        elif isinstance(route, Mount) and not isinstance(route.app, Starlette) and route.routes:
            yield from _included_routers(route.routes)
