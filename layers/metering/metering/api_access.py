"""Who may read what through the Usage API (SPEC §7), decided once per request from what the JWT authorizer
passed on (payload 2.0 `requestContext.authorizer.jwt`: `claims` and `scopes`), and the refusals it answers.

A customer token (scope `metering/usage.read`) names its account in a claim and reads that account only; a
staff token (`metering/usage.read.all`) reads any account. The account a request names must match the id
pattern as the path carries it (an HTTP API hands the function its path percent-decoded, so `acc%2D1` arrives
as `acc-1` and `acc%231` as `acc#1`; it is not decoded again) before it is compared, exactly (no case
folding), with the claim. Nothing here reads the table: a refusal says nothing about whether an account
exists."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metering.fields import ID_PATTERN

READ_OWN_ACCOUNT = "metering/usage.read"
READ_ANY_ACCOUNT = "metering/usage.read.all"
READ_SCOPES = frozenset({READ_OWN_ACCOUNT, READ_ANY_ACCOUNT})

_ID = re.compile(ID_PATTERN)


class RequestRefused(Exception):
    """A request answered with an RFC 9457 problem: `kind` names it (the problem `type`), `detail` says what
    is wrong and never echoes what the caller sent."""

    status = 400
    kind = "invalid-request"
    title = "Bad Request"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class BadRequest(RequestRefused):
    pass


class InvalidCursor(BadRequest):
    kind = "invalid-cursor"


class PeriodNotOpen(BadRequest):
    kind = "period-not-open"


class Forbidden(RequestRefused):
    status = 403
    kind = "forbidden"
    title = "Forbidden"


class NotFound(RequestRefused):
    status = 404
    kind = "not-found"
    title = "Not Found"


class MethodNotAllowed(RequestRefused):
    status = 405
    kind = "method-not-allowed"
    title = "Method Not Allowed"


class NotAcceptable(RequestRefused):
    status = 406
    kind = "not-acceptable"
    title = "Not Acceptable"


@dataclass(frozen=True, slots=True)
class ReadableAccount:
    """An account the caller may read; every read of the API takes one, and only `Caller.account` makes it."""

    account_id: str


@dataclass(frozen=True, slots=True)
class Caller:
    """The bearer of a token the authorizer accepted: its read scopes and the account its claim names."""

    scopes: frozenset[str]
    claimed_account: str | None

    @classmethod
    def of(cls, event: Mapping[str, Any], account_claim: str) -> Caller:
        """The caller of a payload 2.0 event; Forbidden without a read scope. Values of another shape than
        the authorizer passes (a list of scope strings, a string claim) count as absent."""
        jwt = _mapping(_mapping(_mapping(event.get("requestContext")).get("authorizer")).get("jwt"))
        raw_scopes = jwt.get("scopes")
        scopes = frozenset(
            scope for scope in (raw_scopes if isinstance(raw_scopes, list) else []) if isinstance(scope, str)
        )
        if not scopes & READ_SCOPES:
            raise Forbidden(f"the token carries neither {READ_OWN_ACCOUNT} nor {READ_ANY_ACCOUNT}")
        claimed = _mapping(jwt.get("claims")).get(account_claim)
        return cls(scopes & READ_SCOPES, claimed if isinstance(claimed, str) else None)

    def account(self, requested: str) -> ReadableAccount:
        """The account a request's path names, if this caller may read it: BadRequest for an id that breaks
        the pattern (whoever asks), Forbidden for a customer token naming another account."""
        account_id = valid_account_id(requested)
        if READ_ANY_ACCOUNT in self.scopes or account_id == self.claimed_account:
            return ReadableAccount(account_id)
        raise Forbidden("the token may not read this account")


def valid_account_id(requested: str) -> str:
    """The account id a path names; BadRequest when it breaks the id pattern (a `%` left after the gateway's
    decoding included: an id encoded twice is refused, never decoded into another)."""
    if not _ID.fullmatch(requested):
        raise BadRequest(f"the account id does not match {ID_PATTERN}")
    return requested


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
