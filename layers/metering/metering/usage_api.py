"""The Usage API (SPEC §7): what the CRM shows a customer of its usage, and billing staff of any account.

Powertools' `APIGatewayHttpResolver` routes payload 2.0 events, validates query parameters and responses
against the pydantic models below and generates the OpenAPI document from the same models. Every answer that
is not a 2xx is an RFC 9457 problem (`application/problem+json`: `type`, `title`, `status`, `detail`), a
failure included; no stack trace or input value is ever echoed.

What is checked, in order, and why no step can reveal whether an account exists (none reads the table):

1. the route: 404 for an unknown path, 405 for another method on a known one;
2. the form of the query: 400 for an unknown parameter or a value out of its range;
3. the caller: 403 for a token without a read scope (`metering.api_access.Caller`);
4. the account: 400 for an id that breaks the id pattern (as the gateway decoded it; a path segment with a
   character no route accepts, `#` say, is refused the same way), then 403 for a customer token that names
   another account;
5. the cursor: 400 unless this API signed it for the same route, account and period (`metering.cursors`).

Only then is the table read, through a `ReadableAccount` that step 4 alone makes. Module annotations are
evaluated at definition (no `from __future__ import annotations`): the routes are closures whose annotations
Powertools reads for validation and the OpenAPI document."""

import csv
import io
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Depends, Request, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from metering import gateways
from metering.api_access import (
    BadRequest,
    Caller,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    PeriodNotOpen,
    ReadableAccount,
    RequestRefused,
)
from metering.cursors import CURSOR_PATTERN, MAX_CURSOR_LENGTH, Cursors, CursorScope
from metering.errors import ServiceMisconfigured, StoreUnavailable
from metering.fields import ID_PATTERN
from metering.model import PeriodRef
from metering.observability import MetricUnit, dynamodb_request_metrics, logger, metrics
from metering.rules import ZONE_REACH, History, utc_period
from metering.settings import ApiSettings
from metering.store import MeteringStore
from metering.usage_view import (
    AlertView,
    InvoiceView,
    PeriodNotOpenYet,
    ReadSettings,
    UsageView,
    read_usage,
)

PERIOD_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"
"""`YYYY-MM` of the contract's era (1970-2999)."""
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
CSV = "text/csv"
CSV_COLUMNS = ("contactId", "detailType", "eventId", "occurredAt")
PROBLEM_TYPE = "tag:metering.crm,2026:problem:{kind}"
"""RFC 9457 problem types are URIs that need not resolve; tag URIs (RFC 4151) say so."""
OPENAPI_TITLE = "Metering Usage API"
OPENAPI_DESCRIPTION = "Usage, active contacts, invoices and usage alerts of CRM accounts (SPEC §7)."
PROBLEM_REF = {"$ref": "#/components/schemas/ProblemView"}
OPENAPI_VERSION = "1.0.0"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route of the API: its name (in metrics and cursors), its path rule and its query parameters."""

    name: str
    rule: str
    query: frozenset[str] = frozenset()

    @property
    def template(self) -> str:
        """The path as OpenAPI (and Powertools' `Request.route`) writes it."""
        return self.rule.replace("<", "{").replace(">", "}")

    def matches(self, path: str) -> bool:
        return re.fullmatch(re.sub(r"<\w+>", "[^/]+", self.rule), path) is not None


USAGE = Endpoint("usage", "/v1/accounts/<accountId>/usage", frozenset({"period"}))
CONTACTS = Endpoint("contacts", "/v1/accounts/<accountId>/contacts", frozenset({"period", "limit", "cursor"}))
INVOICES = Endpoint("invoices", "/v1/accounts/<accountId>/invoices", frozenset({"limit", "cursor"}))
ALERTS = Endpoint("alerts", "/v1/accounts/<accountId>/alerts", frozenset({"period"}))
OPENAPI = Endpoint("openapi", "/v1/openapi.json")
ENDPOINTS = (USAGE, CONTACTS, INVOICES, ALERTS, OPENAPI)
UNMATCHED = "unmatched"


# ---- response models (the OpenAPI document is generated from them) ----


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class ContactView(_Body):
    contact_id: str
    detail_type: str
    event_id: str
    occurred_at: str


class ContactsPage(_Body):
    """One page of a period's active contacts, each with the first event that made it active."""

    account_id: str
    period: str
    contacts: list[ContactView]
    next_cursor: str | None


class InvoicesPage(_Body):
    """One page of an account's invoices, newest period first."""

    account_id: str
    invoices: list[InvoiceView]
    next_cursor: str | None


class AlertsView(_Body):
    """The usage alerts of a period, by threshold."""

    account_id: str
    period: str
    alerts: list[AlertView]


class ProblemView(BaseModel):
    """An RFC 9457 problem detail."""

    type: str
    title: str
    status: int
    detail: str


def _problem_responses(*statuses: int) -> dict[int, Any]:
    return {
        status: {"description": description, "content": {PROBLEM_JSON: {"model": ProblemView}}}
        for status, description in {
            400: "a malformed request: parameter, account id, period or cursor",
            403: "the token may not read this account",
            404: "no such route",
            405: "a method other than GET",
            406: "neither JSON nor CSV is acceptable",
            500: "a failure of the API",
            503: "the table is throttling; retry",
        }.items()
        if status in statuses
    }


PROBLEMS = _problem_responses(400, 403, 500, 503)

# ---- query parameters ----

AccountIdPath = Annotated[str, Path(description=f"The account, an id: `{ID_PATTERN}`.")]
OptionalPeriod = Annotated[
    str | None, Query(pattern=PERIOD_PATTERN, description="`YYYY-MM`; default: the period open now.")
]
RequiredPeriod = Annotated[str, Query(pattern=PERIOD_PATTERN, description="`YYYY-MM`.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size, 1 to 1000.")]
Cursor = Annotated[
    str | None,
    Query(
        pattern=CURSOR_PATTERN,
        max_length=MAX_CURSOR_LENGTH,
        description="`nextCursor` of the page before (same account, period and route).",
    ),
]


class UsageApi:
    """The resolver with its routes, over one store; `handle` is what the function's handler calls."""

    def __init__(
        self,
        store: MeteringStore,
        settings: ApiSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.cursors = Cursors(lambda: gateways.read_secret(settings.cursor_secret_arn))
        self.read_settings = ReadSettings(settings.default_timezone, settings.grace, settings.plan_prices)
        self.app = APIGatewayHttpResolver(enable_validation=True, response_validation_error_http_code=500)
        self._openapi_json: str | None = None
        self._register_errors()
        self._register_routes()

    def handle(self, event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
        """Answer one request; count it, its outcome and its handler time under its route's name."""
        started = time.perf_counter()
        with dynamodb_request_metrics():
            response = self.app.resolve(event, context)
        path = APIGatewayProxyEventV2(dict(event)).path
        route = next((endpoint.name for endpoint in ENDPOINTS if endpoint.matches(path)), UNMATCHED)
        status = int(response.get("statusCode", 500))
        metrics.add_metric(name=f"ApiRequests_{route}", unit=MetricUnit.Count, value=1)
        if status >= 400:
            outcome = "ApiServerErrors" if status >= 500 else "ApiClientErrors"
            metrics.add_metric(name=f"{outcome}_{route}", unit=MetricUnit.Count, value=1)
        metrics.add_metric(
            name=f"ApiHandlerTime_{route}",
            unit=MetricUnit.Milliseconds,
            value=(time.perf_counter() - started) * 1000,
        )
        return response

    # ---- reads, each through a ReadableAccount ----

    def usage(self, account: ReadableAccount, period: str | None) -> UsageView:
        try:
            return read_usage(self.store, account.account_id, period, self.clock(), self.read_settings)
        except PeriodNotOpenYet as exc:
            raise PeriodNotOpen(str(exc)) from None

    def contacts(self, account: ReadableAccount, period: str, limit: int, cursor: str | None) -> ContactsPage:
        if period > utc_period(self.clock() + ZONE_REACH):
            raise PeriodNotOpen(f"period {period} has not begun in any time zone")
        scope = CursorScope(CONTACTS.name, account.account_id, period)
        after = self.cursors.open(scope, cursor) if cursor is not None else None
        page = self.store.listings.contacts_page(PeriodRef(account.account_id, period), limit, after)
        return ContactsPage(
            account_id=account.account_id,
            period=period,
            contacts=[
                ContactView(
                    contact_id=record.contact_id,
                    detail_type=record.first_detail_type,
                    event_id=record.first_event_id,
                    occurred_at=record.first_occurred_at,
                )
                for record in page.items
            ],
            next_cursor=self.cursors.sign(scope, page.last) if page.last is not None else None,
        )

    def invoices(self, account: ReadableAccount, limit: int, cursor: str | None) -> InvoicesPage:
        scope = CursorScope(INVOICES.name, account.account_id)
        after = self.cursors.open(scope, cursor) if cursor is not None else None
        page = self.store.listings.invoices_page(account.account_id, limit, after)
        return InvoicesPage(
            account_id=account.account_id,
            invoices=[InvoiceView.of(invoice) for invoice in page.items],
            next_cursor=self.cursors.sign(scope, page.last) if page.last is not None else None,
        )

    def alerts(self, account: ReadableAccount, period: str | None) -> AlertsView:
        history = History.of(
            self.store.subscriptions.history(account.account_id, consistent=False),
            self.settings.default_timezone,
        )
        open_period = history.place(self.clock())
        if period is not None and period > open_period:
            raise PeriodNotOpen(f"period {period} has not begun in the account's time zone")
        ref = PeriodRef(account.account_id, period or open_period)
        claims = self.store.alerts.read_claims(ref)
        return AlertsView(
            account_id=ref.account_id,
            period=ref.period,
            alerts=[
                AlertView(
                    threshold_percent=claim.threshold_percent,
                    allowance=claim.allowance,
                    reached_at=claim.reached_at,
                )
                for _, claim in sorted(claims.items())
            ],
        )

    def openapi_json(self) -> str:
        """The OpenAPI document Powertools generates from the routes and models, made once per container.
        Its stock answers for failed validation (422, and a 500 body of its own) are replaced by the
        problems this API answers instead."""
        if self._openapi_json is None:
            document = json.loads(
                self.app.get_openapi_json_schema(
                    title=OPENAPI_TITLE,
                    version=OPENAPI_VERSION,
                    description=OPENAPI_DESCRIPTION,
                    security_schemes={"jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},  # type: ignore[dict-item]
                    security=[{"jwt": []}],
                )
            )
            failure = {
                "description": "a failure of the API",
                "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
            }
            for operation in (op for path in document["paths"].values() for op in path.values()):
                operation["responses"].pop("422", None)
                operation["responses"]["500"] = failure
            for stock in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
                document["components"]["schemas"].pop(stock, None)
            self._openapi_json = json.dumps(document, separators=(",", ":"))
        return self._openapi_json

    # ---- wiring ----

    def _register_routes(self) -> None:
        app, account_claim = self.app, self.settings.account_claim

        def current_caller(request: Request) -> Caller:
            return Caller.of(request.resolved_event.raw_event, account_claim)

        caller_of_request = Annotated[Caller, Depends(current_caller)]
        app.use(middlewares=[_known_query_parameters])

        @app.get(USAGE.rule, summary="Usage of a period", responses=PROBLEMS)
        def usage(
            accountId: AccountIdPath,
            caller: caller_of_request,
            period: OptionalPeriod = None,
        ) -> UsageView:
            return self.usage(caller.account(accountId), period)

        @app.get(
            CONTACTS.rule,
            summary="Active contacts of a period (JSON, or CSV with Accept: text/csv)",
            responses={
                200: {
                    "description": "a page of active contacts; as CSV with an RFC 8288 Link to the next page",
                    "content": {JSON: {"model": ContactsPage}, CSV: {"schema": {"type": "string"}}},
                },
                **_problem_responses(400, 403, 406, 500, 503),
            },
            middlewares=[_csv_when_accepted],
        )
        def contacts(
            accountId: AccountIdPath,
            caller: caller_of_request,
            period: RequiredPeriod,
            limit: Limit = DEFAULT_LIMIT,
            cursor: Cursor = None,
        ) -> ContactsPage:
            return self.contacts(caller.account(accountId), period, limit, cursor)

        @app.get(INVOICES.rule, summary="Invoices, newest period first", responses=PROBLEMS)
        def invoices(
            accountId: AccountIdPath,
            caller: caller_of_request,
            limit: Limit = DEFAULT_LIMIT,
            cursor: Cursor = None,
        ) -> InvoicesPage:
            return self.invoices(caller.account(accountId), limit, cursor)

        @app.get(ALERTS.rule, summary="Usage alerts of a period", responses=PROBLEMS)
        def alerts(
            accountId: AccountIdPath,
            caller: caller_of_request,
            period: OptionalPeriod = None,
        ) -> AlertsView:
            return self.alerts(caller.account(accountId), period)

        @app.get(
            OPENAPI.rule,
            summary="This document",
            responses={
                200: {
                    "description": "the OpenAPI 3 document",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                **_problem_responses(403, 500),
            },
        )
        def openapi(_caller: caller_of_request) -> Response[str]:
            return Response(200, JSON, self.openapi_json())

    def _register_errors(self) -> None:
        """Every failure becomes a problem: refusals as they are, everything else logged and answered 500
        (or 503 while the table throttles)."""
        answers: tuple[tuple[type[Exception], Callable[[Any], Response[str]]], ...] = (
            (NotFoundError, self._no_route),
            (RequestRefused, problem),
            (RequestValidationError, _invalid_request),
            (StoreUnavailable, _store_unavailable),
            (ServiceMisconfigured, _misconfigured),
            (ResponseValidationError, _invalid_response),
            (Exception, _unexpected),
        )
        for error, answer in answers:
            self.app.exception_handler(error)(answer)

    def _no_route(self, _: NotFoundError) -> Response[str]:
        """404 for a path of no route; 405 for another method on a route's path; for a GET on it, the router
        refused the account segment (it holds a character no id has, `#` say): 403 without a read scope, else
        400, as the route itself would answer."""
        event = self.app.current_event
        if not any(endpoint.matches(event.path) for endpoint in ENDPOINTS):
            return problem(NotFound("no route of this API has this path"))
        if event.http_method != "GET":
            return problem(MethodNotAllowed("only GET is served here", headers={"Allow": "GET"}))
        try:
            Caller.of(event.raw_event, self.settings.account_claim)
        except RequestRefused as refusal:
            return problem(refusal)
        return problem(BadRequest(f"the account id does not match {ID_PATTERN}"))


def _invalid_request(error: RequestValidationError) -> Response[str]:
    """What is wrong with which parameter, without the value sent."""
    detail = "; ".join(
        f"{'.'.join(str(part) for part in entry.get('loc', ()))}: {entry.get('msg', entry.get('type'))}"
        for entry in error.errors()
    )
    return problem(BadRequest(detail))


def _store_unavailable(error: StoreUnavailable) -> Response[str]:
    logger.warning("store unavailable", extra={"error": str(error)})
    return problem(_ServiceUnavailable("the usage store is busy; retry in a moment"))


def _misconfigured(fault: ServiceMisconfigured) -> Response[str]:
    metrics.add_metric(name="ConfigurationErrors", unit=MetricUnit.Count, value=1)
    logger.error(
        "service refused a call: configuration or code fault",
        extra={"service": fault.service, "operation": fault.operation, "code": fault.code},
    )
    return problem(_InternalError())


def _invalid_response(error: ResponseValidationError) -> Response[str]:
    locations = [".".join(str(part) for part in entry.get("loc", ())) for entry in error.errors()]
    logger.error("a response broke its model", extra={"errors": locations})
    return problem(_InternalError())


def _unexpected(_: Exception) -> Response[str]:
    logger.exception("unexpected error")
    return problem(_InternalError())


class _ServiceUnavailable(RequestRefused):
    status = 503
    kind = "unavailable"
    title = "Service Unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class _InternalError(RequestRefused):
    status = 500
    kind = "internal-error"
    title = "Internal Server Error"

    def __init__(self) -> None:
        super().__init__("the API failed to answer; the failure is logged")


def problem(refusal: RequestRefused) -> Response[str]:
    """The RFC 9457 problem response of a refusal."""
    body = {
        "type": PROBLEM_TYPE.format(kind=refusal.kind),
        "title": refusal.title,
        "status": refusal.status,
        "detail": refusal.detail,
    }
    return Response(refusal.status, PROBLEM_JSON, json.dumps(body), headers=refusal.headers)


def _known_query_parameters(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Refuse a query parameter the route does not take (a misspelt `limt` would otherwise be ignored)."""
    request: Request = app.request
    endpoint = next((e for e in ENDPOINTS if e.template == request.route), None)
    if endpoint is not None:
        unknown = sorted(set(request.query_parameters or {}) - endpoint.query)
        if unknown:
            allowed = ", ".join(sorted(endpoint.query)) or "none"
            raise BadRequest(f"{len(unknown)} unknown query parameter(s); this route takes: {allowed}")
    return next_middleware(app)


def _csv_when_accepted(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """The contacts page as CSV when the caller prefers `text/csv`, with the next page as an RFC 8288 Link (a
    relative reference: the same path, its query with the next cursor)."""
    wants = _preferred(app.current_event.headers.get("accept"))
    response = next_middleware(app)
    if wants == JSON or response.status_code != 200:
        return response
    page: dict[str, Any] = response.body or {}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows([contact[column] for column in CSV_COLUMNS] for contact in page["contacts"])
    headers: dict[str, str] = {}
    if page["nextCursor"] is not None:
        query = {**(app.current_event.query_string_parameters or {}), "cursor": page["nextCursor"]}
        headers["Link"] = f'<?{urlencode(sorted(query.items()))}>; rel="next"'
    return Response(200, f"{CSV}; charset=utf-8; header=present", text.getvalue(), headers=headers)


def _preferred(accept: str | None) -> str:
    """JSON or CSV, whichever the Accept header weighs more (JSON on a tie or without the header);
    NotAcceptable when it accepts neither."""
    if not accept:
        return JSON
    weights = {JSON: 0.0, CSV: 0.0}
    for part in accept.split(","):
        media, *parameters = (piece.strip() for piece in part.split(";"))
        weight = _weight(parameters)
        for offered, so_far in list(weights.items()):
            if media.lower() in {offered, f"{offered.split('/')[0]}/*", "*/*"}:
                weights[offered] = max(so_far, weight)
    if weights[JSON] == weights[CSV] == 0:
        raise NotAcceptable("this route answers application/json or text/csv")
    return CSV if weights[CSV] > weights[JSON] else JSON


def _weight(parameters: list[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0
