"""Malformed and hostile requests (`hostile_requests.json`, one case per kind): each gets its 4xx as an RFC
9457 problem that names what is wrong without echoing what was sent, and none reads a byte of any account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from metering_tools.capacity import CapacityMeter

from tests.api.conftest import Token, UsageApiClient, customer

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "hostile_requests.json").read_text(encoding="utf-8")
)
PROBLEM_TYPE_PREFIX = "tag:metering.crm,2026:problem:"


def test_the_cases_cover_at_least_25_kinds_of_malformed_request() -> None:
    assert len({case["name"] for case in CASES}) == len(CASES) >= 25
    assert {case["status"] for case in CASES} == {400, 403, 404, 405, 406}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_a_hostile_request_gets_its_problem_and_reads_nothing(
    case: dict[str, Any], api: UsageApiClient
) -> None:
    # Given a request of the case (a customer token of acc-1 unless the case names another)
    token = (
        Token(tuple(case["token"]["scopes"]), case["token"]["claims"])
        if "token" in case
        else customer("acc-1")
    )
    api.meter = CapacityMeter()

    # When it reaches the function
    answer = api.get(
        case["path"],
        case.get("query", ""),
        token=token,
        method=case.get("method", "GET"),
        headers=case.get("headers"),
    )

    # Then it gets the case's status as a problem of the case's kind
    assert answer.is_problem(case["status"]), answer
    problem = answer.json
    assert problem["type"] == PROBLEM_TYPE_PREFIX + case["problem"]
    assert problem["detail"]
    if case["status"] == 405:
        assert answer.headers["allow"] == "GET"
    # And the problem does not echo the account it named, nor a stack trace
    segments = case["path"].split("/")
    named = unquote(segments[3]) if len(segments) > 4 and segments[2] == "accounts" else ""
    if len(named) >= 5:
        assert named not in answer.text
    assert "Traceback" not in answer.text
    # And nothing of the table was read for it, unless it is a well-formed question about a period
    reads = api.meter.stats()["readUnits"]
    assert not reads or case["problem"] == "period-not-open", reads
