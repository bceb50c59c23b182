"""The data-access module against moto where DynamoDB misbehaves: batch requests that leave entries
unprocessed or fail beyond botocore's retries are resubmitted, and give up loudly only when that lasts."""

from __future__ import annotations

import time
from typing import Any

import pytest
from metering.model import PeriodRef, StoreUnavailable
from metering.store import MeteringStore
from metering.store.table import Table

from tests.harness import Metering
from tests.helpers import contact_events, contact_ids, failed_ids

REF = PeriodRef("acc-read", "2026-10")
CONTACTS = contact_ids("con", 150)


@pytest.fixture
def recorded(metering: Metering, monkeypatch: pytest.MonkeyPatch) -> MeteringStore:
    """150 active contacts of acc-read in October, and no real waiting between resubmissions."""
    _, response = metering.record_events(contact_events("acc-read", CONTACTS, "2026-10-05T10:00:00Z"))
    assert failed_ids(response) == []
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    return metering.store


def test_a_batch_read_that_fails_once_then_leaves_keys_unprocessed_returns_every_item(
    recorded: MeteringStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a DynamoDB whose first BatchGetItem call fails beyond botocore's retries, and whose later answers
    # process only half of the keys asked for
    real_call = Table.call
    asked: list[int] = []

    def half_answers(self: Table, operation: Any, **kwargs: Any) -> Any:
        if operation.__name__ != "batch_get_item":
            return real_call(self, operation, **kwargs)
        (table, request), *_ = kwargs["RequestItems"].items()
        keys = request["Keys"]
        asked.append(len(keys))
        if len(asked) == 1:
            raise StoreUnavailable("DynamoDB ThrottlingException")
        half = max(1, len(keys) // 2)
        response = dict(real_call(self, operation, RequestItems={table: {**request, "Keys": keys[:half]}}))
        if keys[half:]:
            response["UnprocessedKeys"] = {table: {**request, "Keys": keys[half:]}}
        return response

    monkeypatch.setattr(Table, "call", half_answers)

    # When the recorder's read of the period asks for its alerts and the 150 contacts
    existing, _ = recorded.read_periods([(REF, contact) for contact in CONTACTS], [REF])

    # Then every item comes back, after the failed call and each unprocessed remainder were resubmitted
    assert {contact for _, contact in existing} == set(CONTACTS)
    assert asked[:3] == [100, 100, 50]


def test_a_batch_read_that_keeps_failing_gives_up_with_the_error(
    recorded: MeteringStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a DynamoDB that throttles every BatchGetItem call beyond botocore's retries
    real_call = Table.call
    tries: list[str] = []

    def always_throttled(self: Table, operation: Any, **kwargs: Any) -> Any:
        if operation.__name__ == "batch_get_item":
            tries.append(operation.__name__)
            raise StoreUnavailable("DynamoDB ThrottlingException")
        return real_call(self, operation, **kwargs)

    monkeypatch.setattr(Table, "call", always_throttled)

    # When the period state is read
    # Then the read gives up after a bounded number of resubmissions, with DynamoDB's reason
    with pytest.raises(StoreUnavailable, match="ThrottlingException"):
        recorded.read_periods([(REF, contact) for contact in CONTACTS], [REF])
    assert len(tries) == 7
