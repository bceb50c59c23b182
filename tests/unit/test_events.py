"""SPEC §2 event contract: every detail-type parses; every kind of invalid event becomes a `Rejection`
with a reason an operator can act on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from metering.events import (
    MAX_ADDON_CONTACTS,
    ContactCreated,
    ContactPropertyChanged,
    ContactStatusChanged,
    MessageSent,
    NoteAdded,
    StatusRenamed,
    SubscriptionChanged,
)
from metering.message_parsing import InboundRecord, parse_record
from metering.model import Rejection

from tests.helpers import DELETE, contact_ids, event_text, load_event, utc

MESSAGE_ID = "5f0e3c1a-7d55-4c8c-9b7e-000000000001"


def parse(body: str | dict[str, Any]) -> object:
    text = body if isinstance(body, str) else json.dumps(body)
    return parse_record(InboundRecord(MESSAGE_ID, text))


def rejected(body: str | dict[str, Any]) -> Rejection:
    result = parse(body)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    return result


@pytest.mark.parametrize(
    ("file_name", "model"),
    [
        ("contact_created.json", ContactCreated),
        ("contact_status_changed.json", ContactStatusChanged),
        ("message_sent.json", MessageSent),
        ("note_added.json", NoteAdded),
        ("contact_property_changed.json", ContactPropertyChanged),
        ("status_renamed.json", StatusRenamed),
        ("status_renamed_claim_check.json", StatusRenamed),
        ("subscription_changed.json", SubscriptionChanged),
    ],
)
def test_every_detail_type_parses_from_its_event_file(file_name: str, model: type) -> None:
    # Given a valid envelope of one detail-type
    body = load_event(file_name)
    # When the recorder parses its SQS body
    event = parse(body)
    # Then it is the typed envelope of that detail-type with the account of its detail
    assert isinstance(event, model)
    assert event.account_id == "acc-1"  # type: ignore[attr-defined]
    assert event.id == body["id"]  # type: ignore[attr-defined]


def test_contact_event_fields_are_typed_and_timestamps_aware() -> None:
    # Given a Contact Created from a funnel with an offset timestamp
    body = load_event("contact_created.json", detail={"occurredAt": "2026-10-05T12:00:00+02:00"})
    # When parsed
    event = parse(body)
    # Then the fields are exposed typed and the instant is the same as in UTC
    assert isinstance(event, ContactCreated)
    assert (event.detail.contact_id, event.detail.origin, event.detail.funnel_id) == (
        "con-1",
        "funnel",
        "fun-1",
    )
    assert event.occurred_at == utc("2026-10-05T10:00:00Z")


def test_optional_fields_may_be_absent_and_unknown_fields_are_ignored() -> None:
    # Given events without their optional fields and with fields the contract does not know
    created = load_event("contact_created.json", detail={"funnelId": DELETE, "origin": "manual", "score": 7})
    status = load_event("contact_status_changed.json", detail={"fromStatusId": DELETE}, extra={"x": 1})
    subscription = load_event("subscription_changed.json", detail={"timezone": DELETE})
    no_account = load_event("note_added.json", account=DELETE, region=DELETE, resources=DELETE)
    # When parsed
    # Then they are accepted (EventBridge-to-SQS bodies may lack `account`)
    for body in (created, status, subscription, no_account):
        assert not isinstance(parse(body), Rejection), body


def test_subscription_changed_carries_plan_cycle_addons_and_timezone() -> None:
    # Given grow yearly with 100 add-on contacts in New York
    body = load_event(
        "subscription_changed.json",
        detail={"billingCycle": "yearly", "addonContacts": 100, "timezone": "America/New_York"},
    )
    # When parsed
    event = parse(body)
    # Then every field is kept as given
    assert isinstance(event, SubscriptionChanged)
    detail = event.detail
    assert (detail.plan, detail.billing_cycle, detail.addon_contacts, detail.timezone) == (
        "grow",
        "yearly",
        100,
        "America/New_York",
    )


def test_addon_contacts_are_accepted_up_to_the_documented_bound_and_rejected_beyond_it() -> None:
    # Given add-on purchases of one billion contacts (the bound of the contract) and one more
    at_bound = load_event("subscription_changed.json", detail={"addonContacts": MAX_ADDON_CONTACTS})
    beyond = load_event("subscription_changed.json", detail={"addonContacts": MAX_ADDON_CONTACTS + 1})
    # When parsed
    accepted = parse(at_bound)
    refused = rejected(beyond)
    # Then the bound is far beyond any real purchase and only what exceeds it is rejected, naming the field
    assert MAX_ADDON_CONTACTS >= 10**9
    assert isinstance(accepted, SubscriptionChanged)
    assert accepted.detail.addon_contacts == MAX_ADDON_CONTACTS
    assert "addonContacts" in refused.reason


def test_status_renamed_accepts_exactly_one_thousand_inline_contacts() -> None:
    # Given a rename of a column of exactly the inline limit
    body = load_event("status_renamed.json", detail={"contactIds": contact_ids("con", 1000)})
    # When parsed
    event = parse(body)
    # Then it is accepted with every id
    assert isinstance(event, StatusRenamed)
    assert event.detail.contact_ids is not None
    assert len(event.detail.contact_ids) == 1000


def test_occurred_at_exactly_five_minutes_after_the_bus_time_is_accepted() -> None:
    # Given an event whose occurredAt is exactly 5 minutes after its envelope time (clock skew allowance)
    body = load_event(
        "contact_created.json", time="2026-10-05T10:00:00Z", detail={"occurredAt": "2026-10-05T10:05:00Z"}
    )
    # When parsed
    # Then it is accepted
    assert isinstance(parse(body), ContactCreated)


@pytest.mark.parametrize(
    ("file_name", "overrides", "reason"),
    [
        pytest.param(
            "contact_created.json", {"detail": {"contactId": "con#1"}}, "detail.contactId", id="id-with-hash"
        ),
        pytest.param(
            "contact_created.json",
            {"detail": {"contactId": "-con"}},
            "detail.contactId",
            id="id-leading-dash",
        ),
        pytest.param(
            "contact_created.json", {"detail": {"contactId": "c" * 129}}, "detail.contactId", id="id-too-long"
        ),
        pytest.param(
            "contact_created.json", {"detail": {"contactId": 12}}, "detail.contactId", id="id-not-a-string"
        ),
        pytest.param(
            "note_added.json", {"detail": {"accountId": "acc 1"}}, "detail.accountId", id="account-with-space"
        ),
        pytest.param(
            "contact_created.json",
            {"detail": {"accountId": DELETE}},
            "detail.accountId",
            id="missing-account",
        ),
        pytest.param(
            "message_sent.json",
            {"detail": {"messageId": DELETE}},
            "detail.messageId",
            id="missing-message-id",
        ),
        pytest.param("contact_created.json", {"detail": DELETE}, "detail", id="missing-detail"),
        pytest.param("contact_created.json", {"time": DELETE}, "time", id="missing-time"),
        pytest.param("contact_created.json", {"source": DELETE}, "source", id="missing-source"),
        pytest.param(
            "contact_created.json",
            {"detail": {"occurredAt": "2026-10-05T10:00:00"}},
            "detail.occurredAt",
            id="naive-timestamp",
        ),
        pytest.param(
            "contact_created.json",
            {"detail": {"occurredAt": "2026-10-05"}},
            "detail.occurredAt",
            id="date-only",
        ),
        pytest.param(
            "contact_created.json", {"time": "2026-10-05T10:00:05"}, "time", id="naive-envelope-time"
        ),
        pytest.param(
            "contact_created.json",
            {"time": "2026-10-05T10:00:00Z", "detail": {"occurredAt": "2026-10-05T10:05:01Z"}},
            "more than 5 minutes",
            id="occurred-after-bus-time-plus-5-minutes",
        ),
        pytest.param(
            "contact_created.json", {"detail": {"origin": "import"}}, "detail.origin", id="origin-outside-set"
        ),
        pytest.param(
            "message_sent.json", {"detail": {"channel": "sms"}}, "detail.channel", id="channel-outside-set"
        ),
        pytest.param(
            "contact_property_changed.json",
            {"detail": {"change": "deleted"}},
            "detail.change",
            id="change-outside-set",
        ),
        pytest.param(
            "status_renamed.json",
            {"detail": {"contactIds": contact_ids("con", 1001)}},
            "detail.contactIds",
            id="1001-inline-contact-ids",
        ),
        pytest.param(
            "status_renamed.json",
            {"detail": {"contactIdsObject": {"bucket": "crm-claim-checks", "key": "a.txt"}}},
            "exactly one of contactIds or contactIdsObject",
            id="both-contact-sources",
        ),
        pytest.param(
            "status_renamed.json",
            {"detail": {"contactIds": DELETE}},
            "exactly one of contactIds or contactIdsObject",
            id="no-contact-source",
        ),
        pytest.param(
            "status_renamed.json",
            {"detail": {"contactIds": ["con-1", "bad#id"]}},
            "detail.contactIds",
            id="bad-inline-id",
        ),
        pytest.param(
            "status_renamed_claim_check.json",
            {"detail": {"contactIdsObject": {"bucket": "Not_A_Bucket", "key": "a.txt"}}},
            "detail.contactIdsObject.bucket",
            id="claim-check-bad-bucket",
        ),
        pytest.param(
            "contact_created.json",
            {"detail-type": "Contact Deleted"},
            "unknown detail-type",
            id="unknown-detail-type",
        ),
        pytest.param(
            "contact_created.json",
            {"detail-type": DELETE},
            "detail-type is missing",
            id="missing-detail-type",
        ),
        pytest.param(
            "subscription_changed.json",
            {"detail": {"addonContacts": True}},
            "detail.addonContacts",
            id="addons-bool",
        ),
        pytest.param(
            "subscription_changed.json",
            {"detail": {"addonContacts": "5"}},
            "detail.addonContacts",
            id="addons-str",
        ),
        pytest.param(
            "subscription_changed.json",
            {"detail": {"addonContacts": -1}},
            "detail.addonContacts",
            id="addons-negative",
        ),
        pytest.param(
            "subscription_changed.json",
            {"detail": {"addonContacts": DELETE}},
            "detail.addonContacts",
            id="addons-missing",
        ),
        pytest.param(
            "subscription_changed.json", {"detail": {"plan": "premium"}}, "detail.plan", id="plan-outside-set"
        ),
        pytest.param(
            "subscription_changed.json",
            {"detail": {"billingCycle": "weekly"}},
            "detail.billingCycle",
            id="cycle",
        ),
        pytest.param(
            "subscription_changed.json",
            {"detail": {"timezone": "Mars/Olympus_Mons"}},
            "unknown time zone",
            id="bad-tz",
        ),
        pytest.param(
            "subscription_changed.json",
            {"detail": {"timezone": "../../etc/passwd"}},
            "detail.timezone",
            id="tz-path",
        ),
    ],
)
def test_invalid_events_are_rejected_with_a_precise_reason(
    file_name: str, overrides: dict[str, Any], reason: str
) -> None:
    # Given an otherwise valid event with one defect
    body = load_event(file_name, **overrides)
    # When the recorder parses it
    rejection = rejected(body)
    # Then it is a rejection that names the defect, keeps the envelope id and the raw body for replay
    assert reason in rejection.reason
    assert rejection.event_id == body.get("id")
    assert rejection.raw == json.dumps(body)
    assert rejection.received_at.endswith("Z")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param(
            {"detail": {"occurredAt": 1791194400}}, "detail.occurredAt", id="occurred-at-as-epoch-number"
        ),
        pytest.param(
            {"detail": {"occurredAt": "1791194400"}}, "detail.occurredAt", id="occurred-at-as-epoch-text"
        ),
        pytest.param({"time": 1791194405}, "time", id="time-as-epoch-number"),
    ],
)
def test_timestamps_that_are_not_iso_8601_strings_are_rejected(overrides: dict[str, Any], field: str) -> None:
    # Given an event whose timestamp is a number (no ISO 8601 text, no offset), SPEC §2
    body = load_event("contact_created.json", **overrides)
    # When parsed
    rejection = rejected(body)
    # Then it is rejected for that field rather than read as a Unix time
    assert field in rejection.reason


def test_rejection_reasons_do_not_echo_the_offending_value() -> None:
    # Given a contact id carrying something that must not end up in logs and metrics
    body = load_event("contact_created.json", detail={"contactId": "secret#token-123"})
    # When rejected
    rejection = rejected(body)
    # Then the reason names the field and the rule but not the value (the raw body keeps it for replay)
    assert "detail.contactId" in rejection.reason
    assert "secret" not in rejection.reason
    assert "secret#token-123" in rejection.raw


def test_an_event_without_an_id_is_rejected_under_its_sqs_message_id() -> None:
    # Given an envelope without `id`
    body = load_event("contact_created.json", id=DELETE)
    # When rejected
    rejection = rejected(body)
    # Then the rejection is keyed by the SQS message id so it is still stored once per message
    assert rejection.event_id == f"sqs:{MESSAGE_ID}"
    assert "id" in rejection.reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param("not json at all", "not a JSON object", id="not-json"),
        pytest.param("[1, 2]", "not a JSON object", id="json-array"),
        pytest.param('"text"', "not a JSON object", id="json-string"),
        pytest.param("", "not a JSON object", id="empty"),
    ],
)
def test_bodies_that_are_not_json_objects_are_rejected(body: str, reason: str) -> None:
    # Given an SQS body that is not a JSON object
    # When parsed
    rejection = rejected(body)
    # Then it is rejected under its message id with the raw body kept
    assert reason in rejection.reason
    assert rejection.event_id == f"sqs:{MESSAGE_ID}"
    assert rejection.raw == body


def test_duplicated_json_keys_are_rejected() -> None:
    # Given an event whose detail names `contactId` twice (which contact is meant is ambiguous)
    body = event_text("contact_created_duplicated_key.json")
    # When parsed
    rejection = rejected(body)
    # Then it is rejected, naming the duplicated key, with the raw body kept byte for byte
    assert "duplicated key 'contactId'" in rejection.reason
    assert rejection.raw == body


def test_a_rejection_for_duplicated_keys_is_keyed_by_the_envelope_id() -> None:
    # Given the same event with a duplicated detail key, delivered twice in two SQS messages
    # (EventBridge delivers at least once), its envelope id being unambiguous
    body = event_text("contact_created_duplicated_key.json")
    first = parse_record(InboundRecord("message-1", body))
    second = parse_record(InboundRecord("message-2", body))
    # When both are rejected
    assert isinstance(first, Rejection)
    assert isinstance(second, Rejection)
    # Then both name the event by its id, so it is stored and reported once (SPEC §4 `rejected`)
    assert first.event_id == second.event_id == "6f1c2a4e-0009-4c1a-9a7e-2b9d1f0c0009"
