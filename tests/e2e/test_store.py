"""The data-access module against moto where DynamoDB misbehaves: batch requests that leave entries
unprocessed or fail beyond botocore's retries are resubmitted, and give up loudly only when that lasts."""

from __future__ import annotations

from typing import Any

import pytest
from metering.errors import StoreUnavailable
from metering.model import PeriodRef
from metering.store import MeteringStore
from metering.store.table import Table

from tests.harness import Metering
from tests.helpers import contact_events, contact_ids, failed_ids

REF = PeriodRef("acc-read", "2026-10")
CONTACTS = contact_ids("con", 150)


@pytest.fixture
def recorded(metering: Metering) -> MeteringStore:
    """150 active contacts of acc-read in October (resubmissions wait in simulated time: `stack`)."""
    _, response = metering.record_events(contact_events("acc-read", CONTACTS, "2026-10-05T10:00:00Z"))
    assert failed_ids(response) == []
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

    # When the recorder reads which of the 150 contacts are active
    found = recorded.contacts.find_active([(REF, contact) for contact in CONTACTS])

    # Then every item comes back, after the failed call and each unprocessed remainder were resubmitted
    assert {contact for _, contact in found.active} == set(CONTACTS)
    assert found.unread == set()
    assert asked[:3] == [100, 100, 50]


@pytest.fixture
def always_throttled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A DynamoDB that throttles every BatchGetItem call beyond botocore's retries; the calls it refused."""
    real_call = Table.call
    tries: list[str] = []

    def throttled(self: Table, operation: Any, **kwargs: Any) -> Any:
        if operation.__name__ == "batch_get_item":
            tries.append(operation.__name__)
            raise StoreUnavailable("DynamoDB ThrottlingException")
        return real_call(self, operation, **kwargs)

    monkeypatch.setattr(Table, "call", throttled)
    return tries


def test_a_contact_read_that_keeps_failing_leaves_its_period_unread(
    recorded: MeteringStore, always_throttled: list[str]
) -> None:
    # Given a DynamoDB that throttles every BatchGetItem call beyond botocore's retries
    # When the recorder reads which of the 150 contacts are active
    found = recorded.contacts.find_active([(REF, contact) for contact in CONTACTS])
    # Then the read gives up after a bounded number of resubmissions of each 100-key chunk, and says which
    # period it could not read instead of failing
    assert (found.active, found.unread) == ({}, {REF})
    assert len(always_throttled) == 2 * 7


def test_a_claims_read_that_keeps_failing_gives_up_with_the_error(
    recorded: MeteringStore, always_throttled: list[str]
) -> None:
    # Given a DynamoDB that throttles every BatchGetItem call beyond botocore's retries
    # When the period's alert claims are read
    # Then the read gives up after a bounded number of resubmissions, with DynamoDB's reason
    with pytest.raises(StoreUnavailable, match="ThrottlingException"):
        recorded.alerts.read_claims(REF)
    assert len(always_throttled) == 7
