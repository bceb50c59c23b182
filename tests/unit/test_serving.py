"""`metering serve`'s gateway (`metering_tools.serving`) against a stand-in
function: requests take the routes `template.yaml` declares and become API Gateway payload 2.0 events,
refused tokens never reach the function, and the function's answer goes back by the rules of that format."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from metering_tools.serving import (
    DEFAULT_ROUTE,
    Gateway,
    GatewayServer,
    IncomingRequest,
    RouteMatch,
    RouteTable,
    http_response,
    request_event,
    route_table,
)
from metering_tools.template import ApiRoute, functions, load_template
from metering_tools.tokens import (
    ACCOUNT_CLAIM,
    CUSTOMER_SCOPE,
    STAFF_SCOPE,
    Authorization,
    LocalAuthorizer,
    TokenRequest,
    issuer_key,
    mint,
)

NOW = datetime(2026, 11, 2, 9, 30, 5, 123000, tzinfo=UTC)
AUTHORIZATION = Authorization(
    claims={ACCOUNT_CLAIM: "acc-1", "scope": CUSTOMER_SCOPE}, scopes=[CUSTOMER_SCOPE]
)
CONTACTS_ROUTE = RouteMatch("GET /v1/accounts/{accountId}/contacts", {"accountId": "acc#1"})
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ROUTES = route_table(functions(load_template())["UsageApi"].routes)
"""The Usage API's routes as the template declares them."""


def incoming(
    target: str, *headers: tuple[str, str], method: str = "GET", body: bytes = b""
) -> IncomingRequest:
    return IncomingRequest(method, target, list(headers), body, source_ip="127.0.0.1")


class StandInFunction:
    """Records the events it gets and answers what the test set."""

    def __init__(self, answer: Any = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.answer = answer if answer is not None else {"statusCode": 200, "body": "{}"}

    def __call__(self, event: dict[str, Any]) -> Any:
        self.events.append(event)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> rsa.RSAPrivateKey:
    return issuer_key(tmp_path_factory.mktemp("issuer") / "key.pem")


# ---- the routes ----


@pytest.mark.parametrize(
    ("method", "path", "route_key", "parameters"),
    [
        ("GET", "/v1/accounts/acc-1/usage", "GET /v1/accounts/{accountId}/usage", {"accountId": "acc-1"}),
        ("GET", "/v1/accounts/acc#1/alerts", "GET /v1/accounts/{accountId}/alerts", {"accountId": "acc#1"}),
        ("GET", "/v1/openapi.json", "GET /v1/openapi.json", {}),
        ("GET", "/v1/accounts/acc-1/usage/", "GET /v1/accounts/{accountId}/usage", {"accountId": "acc-1"}),
        ("GET", "/usage-page", "GET /usage-page", {}),
        ("GET", "/usage-page/", "GET /usage-page", {}),
        ("GET", "/usage-page/main.js", "GET /usage-page/{asset}", {"asset": "main.js"}),
        ("GET", "/usage-page/a/main.js", DEFAULT_ROUTE, {}),
        ("POST", "/v1/accounts/acc-1/usage", DEFAULT_ROUTE, {}),
        ("GET", "/v1/accounts/acc-1/everything", DEFAULT_ROUTE, {}),
        ("GET", "/v1/accounts/a/b/usage", DEFAULT_ROUTE, {}),
    ],
)
def test_a_request_takes_the_route_the_template_declares_and_anything_else_takes_default(
    method: str, path: str, route_key: str, parameters: dict[str, str]
) -> None:
    # Given the Usage API's routes in template.yaml, when a request is routed
    selected = ROUTES.select(method, path)

    # Then it takes its GET route with the path parameter, or the $default route the function answers
    assert selected is not None
    route, path_parameters = selected
    assert (route.key, path_parameters) == (route_key, parameters)


def test_every_route_of_the_usage_api_asks_the_authorizer_for_a_read_scope_but_the_usage_pages() -> None:
    # Given the Usage API's routes, then each is behind the JWT authorizer with the two read scopes, except
    # the usage page and its files, which hold no data and ask for nothing
    assert {route.key for route in ROUTES.routes} >= {"GET /v1/openapi.json", DEFAULT_ROUTE}
    page_routes = {"GET /usage-page", "GET /usage-page/{asset}"}
    for route in ROUTES.routes:
        assert route.authorized == (route.key not in page_routes), route.key
        assert route.scopes == (frozenset() if route.key in page_routes else {CUSTOMER_SCOPE, STAFF_SCOPE})


def test_routes_prefer_exact_methods_and_paths_and_a_route_without_authorizer_skips_it() -> None:
    # Given a function with an ANY greedy route, a GET route with a parameter, an exact one without the
    # authorizer, and no $default
    routes = route_table(
        [
            ApiRoute("ANY", "/v1/{proxy+}", authorized=True, scopes=frozenset()),
            ApiRoute("GET", "/v1/items/{itemId}", authorized=True, scopes=frozenset()),
            ApiRoute("GET", "/v1/items/open", authorized=False, scopes=frozenset()),
        ]
    )

    # When requests are routed
    def key_of(method: str, path: str) -> str | None:
        selected = routes.select(method, path)
        return None if selected is None else f"{selected[0].key} {selected[1]} {selected[0].authorized}"

    # Then the most specific route wins, and a path no route takes has none (API Gateway's 404)
    assert key_of("GET", "/v1/items/open") == "GET /v1/items/open {} False"
    assert key_of("GET", "/v1/items/7") == "GET /v1/items/{itemId} {'itemId': '7'} True"
    assert key_of("DELETE", "/v1/items/7") == "ANY /v1/{proxy+} {'proxy': 'items/7'} True"
    assert key_of("GET", "/v2") is None


# ---- the request event ----


def test_a_request_becomes_a_payload_2_event_with_the_authorizers_claims() -> None:
    # Given a GET with an encoded account id, a repeated query parameter, a repeated header and cookies
    request = incoming(
        "/v1/accounts/acc%231/contacts?period=2026-10&limit=5&x=1&x=2&note=a%20b",
        ("Host", "127.0.0.1:8787"),
        ("Accept", "text/csv"),
        ("X-Trace", "one"),
        ("x-trace", "two"),
        ("Cookie", "a=1; b=2"),
        ("User-Agent", "curl/8.5.0"),
    )

    # When it is turned into the integration's event for its route
    event = request_event(request, CONTACTS_ROUTE, AUTHORIZATION, NOW)

    # Then it has API Gateway's shape: the route and its parameters, the path decoded, the raw query kept,
    # the parsed one joined by commas
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /v1/accounts/{accountId}/contacts"
    assert event["pathParameters"] == {"accountId": "acc#1"}
    assert event["rawPath"] == "/v1/accounts/acc#1/contacts"
    assert event["rawQueryString"] == "period=2026-10&limit=5&x=1&x=2&note=a%20b"
    assert event["queryStringParameters"] == {"period": "2026-10", "limit": "5", "x": "1,2", "note": "a b"}
    # And header names in lower case, repeated ones joined, cookies apart, forwarding headers added
    assert event["cookies"] == ["a=1", "b=2"]
    assert "cookie" not in event["headers"]
    assert event["headers"]["accept"] == "text/csv"
    assert event["headers"]["x-trace"] == "one,two"
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert event["headers"]["x-amzn-trace-id"].startswith("Root=1-")
    assert event["isBase64Encoded"] is False
    assert "body" not in event
    # And the request context names the method, path, stage, time and the authorizer's claims and scopes
    context = event["requestContext"]
    assert context["http"] == {
        "method": "GET",
        "path": "/v1/accounts/acc#1/contacts",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "curl/8.5.0",
    }
    assert (context["routeKey"], context["stage"]) == ("GET /v1/accounts/{accountId}/contacts", "$default")
    assert context["domainName"] == "127.0.0.1:8787"
    assert context["time"] == "02/Nov/2026:09:30:05 +0000"
    assert context["timeEpoch"] == 1_793_611_805_123
    assert len(context["requestId"]) == 16
    assert context["authorizer"] == {
        "jwt": {"claims": {ACCOUNT_CLAIM: "acc-1", "scope": CUSTOMER_SCOPE}, "scopes": [CUSTOMER_SCOPE]}
    }


def test_a_request_without_a_query_has_no_query_parameters_and_a_body_is_passed_as_text_or_base64() -> None:
    # Given a POST with a text body and one with bytes that are not UTF-8, on the $default route
    default = RouteMatch(DEFAULT_ROUTE, {})
    text = request_event(
        incoming("/v1/openapi.json", method="POST", body=b'{"a":1}'), default, AUTHORIZATION, NOW
    )
    binary = request_event(
        incoming("/v1/openapi.json", method="POST", body=b"\xff\x00"), default, AUTHORIZATION, NOW
    )

    # Then neither has query or path parameters; the text is passed as is, the bytes base64-encoded
    assert "queryStringParameters" not in text
    assert "pathParameters" not in text
    assert text["rawQueryString"] == ""
    assert (text["body"], text["isBase64Encoded"]) == ('{"a":1}', False)
    assert (binary["body"], binary["isBase64Encoded"]) == (base64.b64encode(b"\xff\x00").decode(), True)


# ---- the function's answer ----


def test_a_response_object_gives_its_status_headers_cookies_and_body() -> None:
    # Given a problem response with a header and two cookies, and a base64-encoded one
    problem = http_response(
        {
            "statusCode": 403,
            "headers": {"Content-Type": "application/problem+json"},
            "cookies": ["a=1", "b=2; Secure"],
            "body": '{"status":403}',
            "isBase64Encoded": False,
        }
    )
    encoded = http_response(
        {"statusCode": 200, "body": base64.b64encode(b"a,b\n").decode(), "isBase64Encoded": True}
    )

    # Then each comes back as the function said
    assert problem.status == 403
    assert problem.headers == [
        ("content-type", "application/problem+json"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2; Secure"),
    ]
    assert problem.body == b'{"status":403}'
    assert (encoded.status, encoded.body) == (200, b"a,b\n")


def test_an_answer_without_a_status_code_is_a_200_json_body_and_a_malformed_one_a_500() -> None:
    # Given a plain JSON value and a response object whose status is not a number
    plain = http_response({"usage": 1})
    malformed = http_response({"statusCode": "abc"})

    # Then API Gateway's rules apply
    assert (plain.status, plain.headers, json.loads(plain.body)) == (
        200,
        [("content-type", "application/json")],
        {"usage": 1},
    )
    assert (malformed.status, json.loads(malformed.body)) == (500, {"message": "Internal Server Error"})


# ---- the gateway ----


def test_a_refused_token_gets_api_gateways_401_and_never_reaches_the_function(key: rsa.RSAPrivateKey) -> None:
    # Given a gateway in front of a stand-in function, and an expired token
    function = StandInFunction()
    gateway = Gateway(ROUTES, LocalAuthorizer.of(key), function)
    expired = mint(key, TokenRequest("acc-1", expires_in=-10))

    # When requests come without a token and with the expired one
    answers = [
        gateway.handle(incoming("/v1/accounts/acc-1/usage")),
        gateway.handle(incoming("/v1/accounts/acc-1/usage", ("Authorization", f"Bearer {expired}"))),
    ]

    # Then both get API Gateway's own 401, with a reason for the log, and the function ran for neither
    for response, reason in answers:
        assert (response.status, json.loads(response.body)) == (401, {"message": "Unauthorized"})
        assert ("www-authenticate", "Bearer") in response.headers
        assert reason
    assert function.events == []


def test_a_token_without_a_scope_of_the_route_gets_api_gateways_403_and_never_reaches_the_function(
    key: rsa.RSAPrivateKey,
) -> None:
    # Given a token for acc-1 whose only scope is not one the routes ask for
    function = StandInFunction()
    gateway = Gateway(ROUTES, LocalAuthorizer.of(key), function)
    unscoped = mint(key, TokenRequest("acc-1", scope="openid profile"))

    # When it reads the usage
    response, reason = gateway.handle(
        incoming("/v1/accounts/acc-1/usage", ("Authorization", f"Bearer {unscoped}"))
    )

    # Then API Gateway's own 403 comes back, and the function did not run
    assert (response.status, json.loads(response.body)) == (403, {"message": "Forbidden"})
    assert reason == "the token has none of the scopes of GET /v1/accounts/{accountId}/usage"
    assert function.events == []


def test_a_path_no_route_takes_gets_api_gateways_404(key: rsa.RSAPrivateKey) -> None:
    # Given routes without $default, when a request takes none of them
    function = StandInFunction()
    gateway = Gateway(RouteTable(()), LocalAuthorizer.of(key), function)
    response, _ = gateway.handle(incoming("/v1/anything"))

    # Then API Gateway answers 404 itself
    assert (response.status, json.loads(response.body)) == (404, {"message": "Not Found"})
    assert function.events == []


def test_a_failing_function_is_a_500_and_a_closed_gateway_invokes_nothing(key: rsa.RSAPrivateKey) -> None:
    # Given a function that raises, and a valid token
    token = mint(key, TokenRequest("acc-1"))
    gateway = Gateway(ROUTES, LocalAuthorizer.of(key), StandInFunction(RuntimeError("boom")))
    request = incoming("/v1/accounts/acc-1/usage", ("Authorization", f"Bearer {token}"))

    # When it is called, then API Gateway's 500 comes back
    response, _ = gateway.handle(request)
    assert (response.status, json.loads(response.body)) == (500, {"message": "Internal Server Error"})

    # And once the gateway is closed (the server is stopping) nothing more is invoked
    gateway.close()
    response, reason = gateway.handle(request)
    assert response.status == 503
    assert reason == "the server is stopping"


@pytest.fixture
def served(key: rsa.RSAPrivateKey) -> Iterator[tuple[str, StandInFunction]]:
    """A gateway server on a free loopback port in front of a stand-in function answering CSV."""
    function = StandInFunction(
        {
            "statusCode": 200,
            "headers": {"content-type": "text/csv", "link": '<x>; rel="next"'},
            "body": "a,b\n",
        }
    )
    server = GatewayServer(0)
    server.gateway = Gateway(ROUTES, LocalAuthorizer.of(key), function)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    try:
        yield server.url, function
    finally:
        server.shutdown()
        server.server_close()
        loop.join()


def test_the_server_carries_requests_and_answers_over_http(
    served: tuple[str, StandInFunction], key: rsa.RSAPrivateKey
) -> None:
    # Given a served gateway and a customer token
    url, function = served
    token = mint(key, TokenRequest("acc-1"))

    # When a client asks for CSV with the token, and then without one
    request = urllib.request.Request(
        f"{url}/v1/accounts/acc-1/contacts?period=2026-10",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/csv"},
    )
    with DIRECT.open(request, timeout=10) as response:
        status, headers, body = response.status, response.headers, response.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        DIRECT.open(f"{url}/v1/accounts/acc-1/usage", timeout=10)

    # Then the first reached the function as a payload 2.0 event and its answer came back whole
    assert (status, body) == (200, b"a,b\n")
    assert headers["content-type"] == "text/csv"
    assert headers["link"] == '<x>; rel="next"'
    [event] = function.events
    assert event["rawPath"] == "/v1/accounts/acc-1/contacts"
    assert event["routeKey"] == "GET /v1/accounts/{accountId}/contacts"
    assert event["headers"]["accept"] == "text/csv"
    assert event["requestContext"]["authorizer"]["jwt"]["claims"][ACCOUNT_CLAIM] == "acc-1"
    # And the second got the gateway's 401
    assert refused.value.code == 401
    assert json.loads(refused.value.read()) == {"message": "Unauthorized"}
