"""Where the app's own path starts, in each HTTP event shape Lambda receives.

In front of the app's path, a request's path may carry

- the stage: a REST API's always (``requestContext.path`` ``/prod/items/items``, while
  ``path`` is ``/items/items``), an HTTP API's when it is a named stage (``rawPath``
  ``/prod/items/items``), never the HTTP API's ``$default`` stage nor a Function URL;
- ``API_ROOT_PATH`` (``/items``), when the route that matched is under it: the HTTP API's
  ``ANY /items/{proxy+}``, a REST API's ``/items/{proxy+}`` resource. A Function URL, a
  ``$default`` route or ``/{proxy+}`` pass the app's own paths, ``/items`` included. An ALB
  event names no route: a path under the prefix is taken as routed by a ``/items/*`` rule.

Each handler is Mangum's own for its shape, with the ASGI ``path`` set to the path the
client asked for and ``root_path`` to everything in front of the app's path (worked out
once per event: Mangum reads ``scope`` again to build the response). Routing,
``url_for`` (``Location`` headers), ``/docs`` and the OpenAPI ``servers`` (Try it out) then
all agree with the URL the client used.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import unquote

from mangum.handlers import ALB, APIGateway, HTTPGateway
from mangum.types import LambdaConfig, LambdaHandler, Scope

from shared.root_path import RESOLVED
from shared.settings import get_settings


def _under(path: str, prefix: str) -> bool:
    return bool(prefix) and (path == prefix or path.startswith(prefix + "/"))


def _normalized(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"/{prefix}" if prefix else ""


def _resolve(scope: Scope, path: str, stage: str, route: str | None, config: LambdaConfig) -> Scope:
    """Set ``path`` (as the client sent it) and ``root_path`` (stage, base path, API_ROOT_PATH)."""
    root = stage
    rest = path[len(stage) :]
    base_path = _normalized(config["api_gateway_base_path"])
    if _under(rest, base_path):
        root, rest = root + base_path, rest[len(base_path) :]
    prefix = _normalized(get_settings().api_root_path)
    if _under(rest, prefix) and (route is None or _under(route, prefix)):
        root += prefix
    scope["path"] = path or "/"
    scope["root_path"] = root
    scope[RESOLVED] = True
    return scope


def _named_stage(path: str, request_context: dict[str, Any]) -> str:
    stage = request_context.get("stage")
    if not isinstance(stage, str) or not stage or stage == "$default":
        return ""
    return f"/{stage}" if _under(path, f"/{stage}") else ""


def _route_template(event: dict[str, Any]) -> str:
    """``ANY /items/{proxy+}`` -> ``/items/{proxy+}``; ``$default`` -> ``""`` (under no prefix)."""
    route_key = event.get("routeKey")
    if isinstance(route_key, str):
        return route_key.partition(" ")[2]
    resource = event.get("resource")
    return resource if isinstance(resource, str) else ""


class RestApi(APIGateway):
    """API Gateway REST API (payload v1): ``path`` lacks the stage, ``requestContext.path`` has it."""

    @cached_property
    def scope(self) -> Scope:
        app_path = unquote(self.event["path"] or "/")
        client_path = unquote(self.event["requestContext"].get("path") or app_path)
        stage = client_path[: -len(app_path)] if client_path.endswith(app_path) else ""
        return _resolve(super().scope, stage + app_path, stage, _route_template(self.event), self.config)


class HttpApi(HTTPGateway):
    """HTTP API (payload v1 or v2) and Function URLs: a named stage is part of the path."""

    @cached_property
    def scope(self) -> Scope:
        request_context = self.event["requestContext"]
        if self.event["version"] == "2.0":
            path = unquote(request_context["http"]["path"] or "/")
        else:
            path = unquote(self.event["path"] or "/")
        stage = _named_stage(path, request_context)
        return _resolve(super().scope, path, stage, _route_template(self.event), self.config)


class LoadBalancer(ALB):
    """Application Load Balancer: the path as the client sent it; no stage, no route."""

    @cached_property
    def scope(self) -> Scope:
        path = unquote(self.event["path"] or "/")
        return _resolve(super().scope, path, "", None, self.config)


HANDLERS: list[type[LambdaHandler]] = [LoadBalancer, HttpApi, RestApi]
"""In Mangum's own order of inference (``mangum.adapter.HANDLERS``)."""
