"""`metering serve`: the Usage API of a replayed month on 127.0.0.1, for curl and the CRM's developers.

Requests go as on API Gateway's HTTP API: to the route of `template.yaml` it would choose, past its JWT
authorizer (a 401, or a 403 without the route's scopes), as a payload format 2.0 event (stage `$default`) to
the handler `simulate` loads, under its template role; the answer becomes HTTP by that format's rules."""

from __future__ import annotations

import base64
import json
import re
import secrets
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from metering_tools.simulate import Simulation, SimulationOptions, simulate
from metering_tools.template import ApiRoute, functions
from metering_tools.testkit import ACCOUNT
from metering_tools.tokens import Authorization, LocalAuthorizer, Unauthorized, issuer_key

FUNCTION = "UsageApi"
LOOPBACK = "127.0.0.1"
DEFAULT_ROUTE = "$default"


@dataclass(frozen=True, slots=True)
class Route(ApiRoute):
    key: str
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, route: ApiRoute) -> Route:
        """`{accountId}` matches one segment, `{proxy+}` the rest, `$default` (no path) any path. A trailing
        slash routes as if it were not there (HTTP APIs declare no route ending in one)."""
        pattern = re.escape(route.path or "")
        for parameter in re.finditer(r"\{(\w+)(\+?)\}", route.path or ""):
            name, greedy = parameter.groups()
            group = f"(?P<{name}>.+)" if greedy else f"(?P<{name}>[^/]+)"
            pattern = pattern.replace(re.escape(parameter[0]), group)
        compiled = re.compile(".*", re.DOTALL) if route.path is None else re.compile(pattern + "/?")
        key = DEFAULT_ROUTE if route.path is None else f"{route.method} {route.path}"
        return cls(route.method, route.path, route.authorized, route.scopes, key, compiled)

    def preference(self) -> tuple[bool, bool, int, bool]:
        """API Gateway's order: a route with a path before `$default`, without a greedy parameter before one
        with it, with fewer parameters first, an exact method before `ANY`."""
        return (self.path is None, "+}" in self.key, len(self.pattern.groupindex), self.method == "ANY")


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: tuple[Route, ...]

    def select(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route API Gateway would choose for the request and its path parameters; None: 404."""
        for route in sorted(self.routes, key=Route.preference):
            if route.method in ("ANY", method) and (matched := route.pattern.fullmatch(path)):
                return route, matched.groupdict()
        return None


def route_table(routes: Iterable[ApiRoute]) -> RouteTable:
    return RouteTable(tuple(map(Route.of, routes)))


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def gateway_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """An answer API Gateway gives itself, without the function: `{"message": ...}`."""
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    return HttpResponse(status, [("content-type", "application/json"), *(headers or [])], body)


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    method: str
    target: str
    """The request line's target: path and query, percent-encoded as sent."""
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"

    @property
    def path(self) -> str:
        """The path as API Gateway's HTTP API routes it and hands it on: percent-decoded."""
        return unquote(urlsplit(self.target).path)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    key: str
    """The event's `routeKey`: `GET /v1/accounts/{accountId}/usage`, or `$default`."""
    path_parameters: dict[str, str]


def request_event(
    request: IncomingRequest, route: RouteMatch, authorization: Authorization | None, now: datetime
) -> dict[str, Any]:
    """The event API Gateway's HTTP API hands a Lambda integration (payload format 2.0): header names lower
    case, repeated headers and query parameters joined by commas, cookies apart, the path decoded."""
    query_string = urlsplit(request.target).query
    fields = [(name.lower(), value) for name, value in request.headers]
    cookies = [c.strip() for name, value in fields if name == "cookie" for c in value.split(";") if c.strip()]
    headers = _comma_joined((name, value) for name, value in fields if name != "cookie")
    headers.setdefault("x-forwarded-for", request.source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-amzn-trace-id", f"Root=1-{int(now.timestamp()):08x}-{secrets.token_hex(12)}")
    domain_name = headers.get("host", LOOPBACK)
    query = _comma_joined(parse_qsl(query_string, keep_blank_values=True))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.key,
        "rawPath": request.path,
        "rawQueryString": query_string,
        **({"cookies": cookies} if cookies else {}),
        "headers": headers,
        **({"queryStringParameters": query} if query else {}),
        "requestContext": {
            "accountId": ACCOUNT,  # the local stack's AWS account, as moto names it
            "apiId": "local",
            **({} if authorization is None else {"authorizer": authorization.as_event()}),
            "domainName": domain_name,
            "domainPrefix": domain_name.split(".", 1)[0],
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": request.protocol,
                "sourceIp": request.source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": base64.b64encode(secrets.token_bytes(10)).decode(),
            "routeKey": route.key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        **({"pathParameters": route.path_parameters} if route.path_parameters else {}),
    }
    event["isBase64Encoded"] = False
    if request.body:
        try:
            event["body"] = request.body.decode("utf-8")
        except UnicodeDecodeError:
            event.update(body=base64.b64encode(request.body).decode(), isBase64Encoded=True)
    return event


def _comma_joined(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in pairs:
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    return joined


def http_response(result: Any) -> HttpResponse:
    """The function's answer as API Gateway returns it (payload format 2.0): a response object with
    `statusCode`, or any other JSON value sent as a 200 JSON body. A malformed answer is a 500."""
    if not (isinstance(result, dict) and "statusCode" in result):
        return HttpResponse(200, [("content-type", "application/json")], json.dumps(result).encode())
    try:
        status = int(result["statusCode"])
        headers = [
            (str(name).lower(), str(value))
            for name, value in (result.get("headers") or {}).items()
            if str(name).lower() != "content-length"  # the gateway sets it from the body it sends
        ]
        headers += [("set-cookie", str(cookie)) for cookie in result.get("cookies") or []]
        text = result.get("body") or ""
        body = base64.b64decode(text) if result.get("isBase64Encoded") else str(text).encode("utf-8")
    except (TypeError, ValueError, AttributeError):
        return gateway_error(500, "Internal Server Error")
    return HttpResponse(status, headers, body)


@dataclass(slots=True)
class Gateway:
    """The routes, their authorizer and the integration. The replayed stack and the role guard serve one
    invocation at a time, so requests wait for each other here; after `close` none reaches the function."""

    routes: RouteTable
    authorizer: LocalAuthorizer
    invoke: Callable[[dict[str, Any]], Any]
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _open: bool = field(default=True, init=False)

    def handle(self, request: IncomingRequest) -> tuple[HttpResponse, str | None]:
        """The response, and why it is not the function's (for the server's log; never the token)."""
        selected = self.routes.select(request.method, request.path)
        if selected is None:
            return gateway_error(404, "Not Found"), "no route takes this request"
        route, parameters = selected
        authorization = None
        if route.authorized:
            header = next((value for name, value in request.headers if name.lower() == "authorization"), None)
            try:
                authorization = self.authorizer.authorize(header)
            except Unauthorized as refusal:
                return gateway_error(401, "Unauthorized", [("www-authenticate", "Bearer")]), str(refusal)
            if route.scopes and not route.scopes & set(authorization.scopes):
                return gateway_error(403, "Forbidden"), f"the token has none of the scopes of {route.key}"
        event = request_event(request, RouteMatch(route.key, parameters), authorization, datetime.now(UTC))
        with self._lock:
            if not self._open:
                return gateway_error(503, "Service Unavailable"), "the server is stopping"
            try:
                result = self.invoke(event)
            except Exception:  # the function failed: API Gateway answers 500, the log keeps the trace
                traceback.print_exc(file=sys.stderr)
                return gateway_error(500, "Internal Server Error"), "the function failed"
        return http_response(result), None

    def close(self) -> None:
        with self._lock:
            self._open = False


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GatewayServer

    def _serve(self) -> None:
        body = self.rfile.read(max(0, int(self.headers.get("content-length") or 0)))
        headers, source_ip = list(self.headers.items()), self.client_address[0]
        request = IncomingRequest(self.command, self.path, headers, body, source_ip, self.request_version)
        response, refusal = self.server.gateway.handle(request)
        if refusal is not None:
            self.log_message("%s %s: %s", self.command, urlsplit(self.path).path, refusal)
        self.send_response(response.status)
        for name, value in [*response.headers, ("content-length", str(len(response.body)))]:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve


class GatewayServer(ThreadingHTTPServer):
    """Bound at once on loopback, serving once its gateway is set: earlier requests wait in the backlog."""

    gateway: Gateway

    def __init__(self, port: int) -> None:
        super().__init__((LOOPBACK, port), _RequestHandler)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived before the API was up: the replay is abandoned."""


def serve(
    events_path: Path, now: datetime, key_path: Path, grace_hours: float | None = None, port: int = 0
) -> None:
    """The port is bound before the replay, so a port in use fails at once; `listening on ...` goes to the
    real stdout once requests are answered (simulate sends stdout to stderr while it runs)."""
    function = functions().get(FUNCTION)
    if function is None:
        raise SystemExit(f"metering serve: template.yaml has no {FUNCTION} function")
    routes, authorizer = route_table(function.routes), LocalAuthorizer.of(issuer_key(key_path))
    stop = threading.Event()
    try:
        server = GatewayServer(port)
    except OSError as exc:
        raise SystemExit(f"metering serve: cannot listen on {LOOPBACK}:{port}: {exc.strerror}") from exc

    def abandon(signum: int, frame: FrameType | None) -> None:
        raise StopRequested(signal.Signals(signum).name)

    def serve_replayed(run: Simulation) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):  # from now on they stop the server, not the replay
            signal.signal(number, lambda signum, frame: stop.set())
        run.module(FUNCTION).API.clock = lambda: now  # the API answers as of the replay's --now
        server.gateway = Gateway(routes, authorizer, lambda event: run.invoke(FUNCTION, event))
        threading.Thread(target=server.serve_forever, name="usage-api", daemon=True).start()
        print(f"listening on {server.url}", file=sys.__stdout__ or sys.stdout, flush=True)
        stop.wait()
        server.shutdown()  # returns once the serving loop has ended
        server.gateway.close()

    with server:
        previous = {number: signal.signal(number, abandon) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            simulate(SimulationOptions(events_path, now, grace_hours), after_replay=serve_replayed)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
