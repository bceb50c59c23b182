"""`metering serve`: the Usage API of a replayed month on 127.0.0.1, for curl and the CRM's developers.

Each request goes the way API Gateway's HTTP API takes it: the route `template.yaml` declares for it, the JWT
authorizer's checks (a 401, or a 403 for a token without the route's scopes, that never reaches the function),
then the event of a Lambda integration with payload format 2.0 (stage `$default`), handed to the same handler
`simulate` loads, as its template role. The function's answer becomes the HTTP response by the rules of that
format."""

from __future__ import annotations

import base64
import json
import secrets
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from metering_tools.api_routes import RouteTable, route_table
from metering_tools.provisioning import function_configs, load_template
from metering_tools.simulate import Simulation, SimulationOptions, simulate
from metering_tools.testkit import ACCOUNT
from metering_tools.tokens import Authorization, LocalAuthorizer, Unauthorized, issuer_key

FUNCTION = "UsageApi"
LOOPBACK = "127.0.0.1"
STAGE = "$default"
API_ID = "local"

Invoke = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def gateway_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """An answer API Gateway gives itself, without the function: `{"message": ...}`."""
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    return HttpResponse(status, [("content-type", "application/json"), *(headers or [])], body)


UNAUTHORIZED_CHALLENGE = [("www-authenticate", "Bearer")]


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """An HTTP request as the gateway receives it."""

    method: str
    target: str
    """The request line's target: path and query, percent-encoded as sent."""
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    key: str
    """The event's `routeKey`: `GET /v1/accounts/{accountId}/usage`, or `$default`."""
    path_parameters: dict[str, str]


def request_path(request: IncomingRequest) -> str:
    """The path as API Gateway's HTTP API routes it and hands it on: percent-decoded."""
    return unquote(urlsplit(request.target).path)


def request_event(
    request: IncomingRequest, route: RouteMatch, authorization: Authorization | None, now: datetime
) -> dict[str, Any]:
    """The event API Gateway's HTTP API hands a Lambda integration (payload format 2.0): header names lower
    case, repeated headers joined by commas, cookies apart, the path decoded, the query string raw and
    parsed (repeated parameters joined by commas), the authorizer's claims and scopes."""
    query_string = urlsplit(request.target).query
    path = request_path(request)
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        lower = name.lower()
        if lower == "cookie":
            cookies.extend(cookie.strip() for cookie in value.split(";") if cookie.strip())
        else:
            headers[lower] = f"{headers[lower]},{value}" if lower in headers else value
    headers.setdefault("x-forwarded-for", request.source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-amzn-trace-id", f"Root=1-{int(now.timestamp()):08x}-{secrets.token_hex(12)}")
    request_id = base64.b64encode(secrets.token_bytes(10)).decode()
    domain_name = headers.get("host", LOOPBACK)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.key,
        "rawPath": path,
        "rawQueryString": query_string,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    query = _query_parameters(query_string)
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": ACCOUNT,  # the local stack's AWS account, as moto names it
        "apiId": API_ID,
        **({} if authorization is None else {"authorizer": authorization.as_event()}),
        "domainName": domain_name,
        "domainPrefix": domain_name.split(".", 1)[0],
        "http": {
            "method": request.method,
            "path": path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route.key,
        "stage": STAGE,
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(now.timestamp() * 1000),
    }
    if route.path_parameters:
        event["pathParameters"] = route.path_parameters
    if request.body:
        event.update(_event_body(request.body))
    else:
        event["isBase64Encoded"] = False
    return event


def _query_parameters(raw_query: str) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    return parameters


def _event_body(body: bytes) -> dict[str, Any]:
    try:
        return {"body": body.decode("utf-8"), "isBase64Encoded": False}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "isBase64Encoded": True}


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
    invoke: Invoke
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _open: bool = field(default=True, init=False)

    def handle(self, request: IncomingRequest) -> tuple[HttpResponse, str | None]:
        """The response, and why it is not the function's (for the server's log; never the token)."""
        selected = self.routes.select(request.method, request_path(request))
        if selected is None:
            return gateway_error(404, "Not Found"), "no route takes this request"
        route, path_parameters = selected
        authorization = None
        if route.authorized:
            token_header = next(
                (value for name, value in request.headers if name.lower() == "authorization"), None
            )
            try:
                authorization = self.authorizer.authorize(token_header)
            except Unauthorized as refusal:
                return gateway_error(401, "Unauthorized", UNAUTHORIZED_CHALLENGE), str(refusal)
            if route.scopes and not route.scopes & set(authorization.scopes):
                return gateway_error(403, "Forbidden"), f"the token has none of the scopes of {route.key}"
        event = request_event(
            request, RouteMatch(route.key, path_parameters), authorization, datetime.now(UTC)
        )
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
        """Wait for the invocation under way, then refuse the rest (the stack goes down after this)."""
        with self._lock:
            self._open = False


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GatewayServer

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = IncomingRequest(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=self.rfile.read(length) if length > 0 else b"",
            source_ip=self.client_address[0],
            protocol=self.request_version,
        )
        response, refusal = self.server.gateway.handle(request)
        if refusal is not None:
            self.log_message("%s %s: %s", self.command, urlsplit(self.path).path, refusal)
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve


class GatewayServer(ThreadingHTTPServer):
    """A threaded HTTP server on loopback in front of a `Gateway`, bound at once and serving once its gateway
    is set (requests that come before wait in the listen backlog)."""

    gateway: Gateway

    def __init__(self, port: int) -> None:
        super().__init__((LOOPBACK, port), _RequestHandler)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    events_path: Path
    now: datetime
    issuer_key: Path
    grace_hours: float | None = None
    port: int = 0


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived before the API was up: the replay is abandoned."""


def serve(options: ServeOptions) -> None:
    """Replay the month as `simulate` does, then serve the Usage API until SIGINT or SIGTERM. The port is
    bound before the replay, so a port in use fails at once; `listening on ...` goes to the real stdout once
    requests are answered (simulate sends stdout to stderr while it runs)."""
    template = load_template()
    function = function_configs(template).get(FUNCTION)
    if function is None:
        raise SystemExit(f"metering serve: template.yaml has no {FUNCTION} function")
    routes = route_table(template, function.logical_id)
    authorizer = LocalAuthorizer.of(issuer_key(options.issuer_key))
    stop = threading.Event()
    serving = threading.Event()
    try:
        server = GatewayServer(options.port)
    except OSError as exc:
        raise SystemExit(
            f"metering serve: cannot listen on {LOOPBACK}:{options.port}: {exc.strerror}"
        ) from exc

    def serve_replayed(run: Simulation) -> None:
        run.module(FUNCTION).API.clock = lambda: options.now  # the API answers as of the replay's --now
        server.gateway = Gateway(routes, authorizer, lambda event: run.invoke(FUNCTION, event))
        loop = threading.Thread(target=server.serve_forever, name="usage-api", daemon=True)
        loop.start()
        serving.set()
        print(f"listening on {server.url}", file=sys.__stdout__ or sys.stdout, flush=True)
        stop.wait()
        server.shutdown()
        server.gateway.close()
        loop.join()

    with server, _stop_signals(stop, serving):
        simulate(
            SimulationOptions(
                events_path=options.events_path, now=options.now, grace_hours=options.grace_hours
            ),
            after_replay=serve_replayed,
        )


@contextmanager
def _stop_signals(stop: threading.Event, serving: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM stop the server; before it serves they abandon the replay (`StopRequested`)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if not serving.is_set():
            raise StopRequested(signal.Signals(signum).name)

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
