"""The routes of an HTTP API as `template.yaml` declares them for one function (its `HttpApi` events, and the
API's default JWT authorizer with its scopes), so `metering serve` selects the route, names its `routeKey` and
path parameters, and requires the scopes API Gateway would."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_ROUTE = "$default"
NO_AUTHORIZER = "NONE"
_PARAMETER = re.compile(r"\{(\w+)(\+?)\}")


@dataclass(frozen=True, slots=True)
class Route:
    key: str
    """`GET /v1/accounts/{accountId}/usage`, or `$default`."""
    method: str | None
    """None: any method."""
    path: re.Pattern[str] | None
    """None: any path (the `$default` route)."""
    greedy: bool
    """The path ends in a parameter that takes the rest (`{proxy+}`)."""
    authorized: bool
    """Whether the JWT authorizer checks the request (SAM's `Auth.Authorizer: NONE` turns it off)."""
    scopes: frozenset[str]
    """The token must carry one of these (the authorizer's `AuthorizationScopes`); empty: none is asked."""

    def path_parameters(self, method: str, path: str) -> dict[str, str] | None:
        """The request's path parameters if this route takes it, else None."""
        if self.method is not None and self.method != method:
            return None
        if self.path is None:
            return {}
        matched = self.path.fullmatch(path)
        return matched.groupdict() if matched else None

    def preference(self) -> tuple[bool, bool, int, bool]:
        """API Gateway's order: a route with a path before `$default`, without a greedy parameter before one
        with it, with fewer parameters first, an exact method before `ANY`."""
        if self.path is None:
            return (True, True, 0, True)
        return (False, self.greedy, len(self.path.groupindex), self.method is None)


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: tuple[Route, ...]

    def select(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route API Gateway would choose for the request and its path parameters; None: 404."""
        for route in sorted(self.routes, key=Route.preference):
            parameters = route.path_parameters(method, path)
            if parameters is not None:
                return route, parameters
        return None


def route_table(template: Mapping[str, Any], function_logical_id: str) -> RouteTable:
    """The function's `HttpApi` events as routes; without `Path` and `Method` an event is `$default`."""
    resources = template["Resources"]
    events = resources[function_logical_id]["Properties"].get("Events", {})
    routes = []
    for event in events.values():
        if event["Type"] != "HttpApi":
            continue
        properties = event.get("Properties", {})
        api_reference = properties.get("ApiId")
        api_auth = (
            resources[api_reference["Ref"]]["Properties"].get("Auth", {})
            if isinstance(api_reference, Mapping)
            else {}
        )
        routes.append(_route(properties, api_auth))
    return RouteTable(tuple(routes))


def _route(properties: Mapping[str, Any], api_auth: Mapping[str, Any]) -> Route:
    auth = properties.get("Auth", {})
    authorizer_name = auth.get("Authorizer", api_auth.get("DefaultAuthorizer"))
    authorizer = api_auth.get("Authorizers", {}).get(authorizer_name, {})
    scopes = auth.get("AuthorizationScopes", authorizer.get("AuthorizationScopes", []))
    method = str(properties.get("Method", "ANY")).upper()
    path = properties.get("Path")
    return Route(
        key=DEFAULT_ROUTE if path is None else f"{method} {path}",
        method=None if method == "ANY" else method,
        path=None if path is None else _path_pattern(str(path)),
        greedy=path is not None and "+}" in str(path),
        authorized=authorizer_name not in (None, NO_AUTHORIZER),
        scopes=frozenset(scopes),
    )


def _path_pattern(path: str) -> re.Pattern[str]:
    """`/v1/accounts/{accountId}/usage` matches one segment for `accountId`; `{proxy+}` takes the rest. A
    trailing slash routes as if it were not there (HTTP APIs declare no route ending in one)."""
    pattern = ""
    position = 0
    for parameter in _PARAMETER.finditer(path):
        pattern += re.escape(path[position : parameter.start()])
        name, greedy = parameter.groups()
        pattern += f"(?P<{name}>.+)" if greedy else f"(?P<{name}>[^/]+)"
        position = parameter.end()
    return re.compile(pattern + re.escape(path[position:]) + "/?")
