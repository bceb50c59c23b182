"""Period close end to end against moto: each invoice exactly once whatever is re-run or killed, late events,
and the subscription that decides the bill."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from metering.errors import ServiceMisconfigured
from metering_tools.roles import Call, Handler
from metering_tools.testkit import answered

from tests.harness import Metering
from tests.helpers import (
    contact_event,
    contact_ids,
    failed_ids,
    redelivery,
    status_renamed,
    subscription_changed,
)

OCTOBER = "2026-10"
CLOSE_DUE = "2026-11-01T06:00:00Z"  # UTC October end + 6 h grace
INVOICE = "Overusage Invoice Issued"


def given_usage(
    metering: Metering, account_id: str, plan: str | None, active: int, **subscription: Any
) -> None:
    """An account on `plan` since September (none when None) with `active` contacts in October."""
    events = [subscription_changed(account_id, plan, "2026-09-01T00:00:00Z", **subscription)] if plan else []
    events.append(status_renamed(account_id, "2026-10-10T09:00:00Z", contact_ids=contact_ids("con", active)))
    _, response = metering.record_events(events)
    assert failed_ids(response) == []


def invoiced_amounts(metering: Metering) -> dict[str, int]:
    return {row["accountId"]: row["amountCents"] for row in metering.report()["invoices"]}


def published_per_account(metering: Metering) -> Counter[str]:
    return Counter(detail["accountId"] for detail in metering.events_published(INVOICE))


def test_closing_twice_stores_and_publishes_one_invoice(metering: Metering) -> None:
    # Given an account over its allowance (grow, 263), one exactly at it, and a legacy account over
    given_usage(metering, "acc-over", "grow", 263)
    given_usage(metering, "acc-within", "start", 50)
    given_usage(metering, "acc-legacy", "legacy", 60)

    # When the scheduled close runs twice before the queue is drained, then the whole close runs again an
    # hour later, and InvoiceAccount gets a request sent twice (a redelivery)
    first = metering.schedule_closes(CLOSE_DUE)
    second = metering.schedule_closes(CLOSE_DUE)
    failures = metering.invoice_queued()
    metering.close("2026-11-01T07:00:00Z")
    again = metering.invoice_requests([{"accountId": "acc-over", "period": OCTOBER, "asOf": CLOSE_DUE}])

    # Then the close requested one close per billed account (not the legacy one), once
    assert (first["requestsSent"], second["requestsSent"]) == (2, 0)
    assert failures == []
    assert failed_ids(again) == []
    # And only the account over its allowance has an invoice, stored once and published once
    assert len(metering.invoice_items()) == 1
    published = metering.events_published(INVOICE)
    assert published == [
        {
            "invoiceId": "acc-over:2026-10",
            "accountId": "acc-over",
            "period": OCTOBER,
            "plan": "grow",
            "billingCycle": "monthly",
            "includedContacts": 250,
            "addonContacts": 0,
            "allowance": 250,
            "activeContacts": 263,
            "overusageContacts": 13,
            "unitPriceCents": 25,
            "amountCents": 325,
            "currency": "EUR",
            "issuedAt": "2026-11-01T06:00:00.000000Z",
        }
    ]
    # And every period is closed: a later run queues nothing
    assert metering.schedule_closes("2026-11-01T08:00:00Z")["requestsSent"] == 0
    assert {row["accountId"]: row["closed"] for row in metering.report()["usage"]} == {
        "acc-legacy": True,
        "acc-over": True,
        "acc-within": True,
    }


def test_a_close_killed_after_some_invoices_is_finished_by_the_next_run_with_each_invoice_once(
    metering: Metering,
) -> None:
    # Given five accounts over the allowance of start (50): 51..55 active contacts
    accounts = {f"acc-{n}": 50 + n for n in range(1, 6)}
    for account_id, active in accounts.items():
        given_usage(metering, account_id, "start", active)

    # When the close run is killed after InvoiceAccount handled two of the five close requests (the other
    # three were received, so they stay invisible until their visibility timeout passes)
    metering.schedule_closes(CLOSE_DUE)
    metering.invoice_queued(limit=2)
    # Then two invoices exist so far
    assert len(metering.invoice_items()) == 2

    # When the next hourly run finds nothing new to hand over, and the lost requests' visibility timeout
    # passes
    assert metering.close("2026-11-01T07:00:00Z") == []
    metering.close_requests_reappear()
    assert metering.invoice_queued() == []
    # Then every account over its allowance has exactly one invoice, stored and published once
    assert invoiced_amounts(metering) == {
        account_id: (active - 50) * 25 for account_id, active in accounts.items()
    }
    assert len(metering.invoice_items()) == 5
    assert published_per_account(metering) == Counter(dict.fromkeys(accounts, 1))


def test_a_close_whose_publication_fails_for_one_account_publishes_it_once_on_the_next_run(
    metering: Metering,
) -> None:
    # Given three accounts over the allowance of start
    for account_id in ("acc-a", "acc-b", "acc-c"):
        given_usage(metering, account_id, "start", 60)
    # And an event bus that refuses acc-b's invoice once
    refused = metering.refuse_put_events(
        lambda entries: any(entry["Detail"].get("accountId") == "acc-b" for entry in entries)
    )

    # When the close runs
    failures = metering.close(CLOSE_DUE)
    # Then acc-b's close request is reported for retry; its invoice is stored but not yet published
    assert len(failures) == 1
    assert [entry["Detail"]["accountId"] for entry in refused] == ["acc-b"]
    assert published_per_account(metering) == Counter({"acc-a": 1, "acc-c": 1})
    assert len(metering.invoice_items()) == 3

    # When SQS delivers the failed request again after its visibility timeout, and the next run comes
    metering.close_requests_reappear()
    assert metering.invoice_queued() == []
    assert metering.close("2026-11-01T07:00:00Z") == []
    # Then each invoice exists exactly once and was published exactly once
    assert len(metering.invoice_items()) == 3
    assert published_per_account(metering) == Counter({"acc-a": 1, "acc-b": 1, "acc-c": 1})
    assert invoiced_amounts(metering) == {"acc-a": 250, "acc-b": 250, "acc-c": 250}


def test_an_invoice_whose_publication_is_denied_is_published_at_once_by_the_redelivery_after_the_fix(
    metering: Metering,
) -> None:
    # Given an account over the allowance of start, its October sealed by the close job
    given_usage(metering, "acc-denied", "start", 60)
    metering.schedule_closes(CLOSE_DUE)
    request = {"accountId": "acc-denied", "period": "2026-10", "asOf": CLOSE_DUE}
    # And InvoiceAccount's role refused events:PutEvents (a deployment fault, not a transient one)
    denied = {"now": True}

    def deny_for(function: str) -> Handler:
        def deny(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
            if not denied["now"]:
                return None
            error = {"Code": "AccessDeniedException", "Message": f"{function} may not put events"}
            return answered(400), {"Error": error}

        return deny

    metering.guard.identities.register_per_function("before-call.eventbridge.PutEvents", deny_for)

    # When InvoiceAccount handles the close request
    # Then the invocation fails (its Errors alarm fires; SQS keeps the request) with the invoice stored
    with pytest.raises(ServiceMisconfigured):
        metering.invoice_requests([request])
    assert len(metering.invoice_items()) == 1
    assert published_per_account(metering) == Counter()

    # When the role is fixed and SQS delivers the request again, well within the publication lease's expiry
    denied["now"] = False
    response = metering.invoice_requests([request])
    # Then the invoice is published at once (the failed publication released its lease), exactly once
    assert response == {"batchItemFailures": []}
    assert published_per_account(metering) == Counter({"acc-denied": 1})
    assert invoiced_amounts(metering) == {"acc-denied": 250}


# ---- late events ----


def test_an_event_delivered_after_its_period_closed_is_late_not_counted_not_billed(
    metering: Metering,
) -> None:
    # Given 55 October contacts on start, closed and invoiced (5 over, 125 cents)
    given_usage(metering, "acc-late", "start", 55)
    metering.close(CLOSE_DUE)
    # When an October event for a new contact is put on the bus after October's end plus grace,
    # and delivered twice
    late = contact_event(
        "acc-late",
        "con-0099",
        "2026-10-31T20:00:00Z",
        delivered_at="2026-11-01T08:00:00Z",
        event_id="evt-late",
    )
    batch, response = metering.record_events([late])
    again = metering.record(redelivery(batch))
    # Then it is recorded once as late, neither counted nor billed
    assert failed_ids(response) == failed_ids(again) == []
    assert metering.report()["late"] == [{"eventId": "evt-late", "accountId": "acc-late", "period": OCTOBER}]
    assert metering.active_contacts("acc-late", OCTOBER) == 55
    assert "con-0099" not in metering.contact_items("acc-late", OCTOBER)
    assert invoiced_amounts(metering) == {"acc-late": 125}


def test_an_event_put_on_the_bus_after_grace_is_late_even_before_the_close_job_ran(
    metering: Metering,
) -> None:
    # Given an account with October usage whose close has not run yet
    given_usage(metering, "acc-early-late", "start", 55)
    # When an October event arrives whose bus time is past October's end plus grace
    late = contact_event(
        "acc-early-late",
        "con-0099",
        "2026-10-31T23:00:00Z",
        delivered_at=CLOSE_DUE,
        event_id="evt-past-grace",
    )
    metering.record_events([late])
    metering.close("2026-11-01T07:00:00Z")
    # Then it is late and the invoice does not include it
    assert metering.report()["late"] == [
        {"eventId": "evt-past-grace", "accountId": "acc-early-late", "period": OCTOBER}
    ]
    assert invoiced_amounts(metering) == {"acc-early-late": 125}


def test_an_event_within_grace_counts_before_the_close_and_is_late_after_the_seal(metering: Metering) -> None:
    # Given 55 October contacts on start
    given_usage(metering, "acc-grace", "start", 55)
    # When an October event put on the bus within the grace time is recorded before the close
    in_grace = contact_event(
        "acc-grace", "con-0056", "2026-10-31T23:30:00Z", delivered_at="2026-11-01T03:00:00Z"
    )
    metering.record_events([in_grace])
    # And the period is closed
    metering.close(CLOSE_DUE)
    # And another October event put on the bus within grace is only delivered after the seal (a slow queue)
    sealed = contact_event(
        "acc-grace",
        "con-0057",
        "2026-10-31T23:40:00Z",
        delivered_at="2026-11-01T03:10:00Z",
        event_id="evt-after-seal",
    )
    _, response = metering.record_events([sealed])
    # Then the first counts and is billed; the second is late
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-grace", OCTOBER) == 56
    assert invoiced_amounts(metering) == {"acc-grace": 150}
    assert metering.report()["late"] == [
        {"eventId": "evt-after-seal", "accountId": "acc-grace", "period": OCTOBER}
    ]
    assert "con-0057" not in metering.contact_items("acc-grace", OCTOBER)


def test_an_event_counted_before_the_seal_and_redelivered_after_it_is_not_listed_as_late(
    metering: Metering,
) -> None:
    # Given 55 October contacts on start, and an in-grace event that made a 56th contact active
    given_usage(metering, "acc-again", "start", 55)
    counted = contact_event(
        "acc-again", "con-0056", "2026-10-31T23:30:00Z", delivered_at="2026-11-01T03:00:00Z"
    )
    batch, _ = metering.record_events([counted])
    # And the period is closed
    metering.close(CLOSE_DUE)
    # When SQS delivers that event again after the seal, to a container that has not seen it
    metering.cold_start()
    response = metering.record(redelivery(batch))
    # Then it is recognised as counted and billed: nothing is listed as late
    assert failed_ids(response) == []
    assert metering.counts("acc-again", OCTOBER) == (56, set(contact_ids("con", 56)))
    assert invoiced_amounts(metering) == {"acc-again": 150}
    assert metering.report()["late"] == []


def test_the_close_waits_out_recordings_that_may_still_write_before_it_counts(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 55 October contacts on start, and close functions deployed with RecordActivity's real timeout
    # (a recording that read the period open just before the seal may write for another 60 s)
    given_usage(metering, "acc-fence", "start", 55)
    monkeypatch.setenv("RECORDER_TIMEOUT_SECONDS", "60")
    metering.cold_start()
    handed_over = metering.accept_hand_overs()
    # When the close runs at October's close instant with 60 s left before its deadline
    run = metering.schedule_closes(CLOSE_DUE, remaining_seconds=60)
    # And a close request for the account reaches InvoiceAccount at once
    early = metering.invoice_requests([{"accountId": "acc-fence", "period": OCTOBER, "asOf": CLOSE_DUE}])
    # And an in-grace October event is delivered after the seal
    _, late = metering.record_events(
        [contact_event("acc-fence", "con-0056", "2026-10-31T23:30:00Z", delivered_at="2026-11-01T03:00:00Z")]
    )
    # Then the period is sealed (the event is late), but nothing is counted or billed yet: the run handed
    # the rest over to a new invocation rather than wait past its deadline, and the request is retried
    assert failed_ids(late) == []
    assert [row["eventId"] for row in metering.report()["late"]] == [late_event_id(metering)]
    assert run == {"scheduledTime": "2026-11-01T06:00:00+00:00", "requestsSent": 0, "handedOver": True}
    close_periods = metering.functions["ClosePeriods"].function_arn
    assert handed_over == [(close_periods, {"scheduledTime": CLOSE_DUE})]
    # (invoking itself by its own ARN, which its role grants)
    assert Call("lambda:InvokeFunction", close_periods) in metering.guard.census.calls("ClosePeriods")
    assert len(failed_ids(early)) == 1
    assert metering.report()["invoices"] == []


def late_event_id(metering: Metering) -> str:
    [row] = metering.report()["late"]
    return str(row["eventId"])


# ---- which subscription bills the period ----


def test_a_mid_month_upgrade_is_billed_with_the_subscription_in_effect_at_period_end(
    metering: Metering,
) -> None:
    # Given an account on start since September that upgrades to grow effective 15 October
    metering.record_events([subscription_changed("acc-upgrade", "start", "2026-09-01T00:00:00Z")])
    # And 263 contacts became active in October, all before the upgrade
    metering.record_events(
        [status_renamed("acc-upgrade", "2026-10-05T09:00:00Z", contact_ids=contact_ids("con", 263))]
    )
    metering.record_events([subscription_changed("acc-upgrade", "grow", "2026-10-15T00:00:00Z")])
    # When October closes
    metering.close(CLOSE_DUE)
    # Then the invoice uses grow (allowance 250): 13 over, 325 cents
    [invoice] = metering.report()["invoices"]
    assert (invoice["plan"], invoice["allowance"], invoice["overusageContacts"], invoice["amountCents"]) == (
        "grow",
        250,
        13,
        325,
    )


def test_a_change_effective_exactly_at_period_end_does_not_bill_that_period(metering: Metering) -> None:
    # Given grow with 20 add-ons for October and a downgrade to start effective at 1 November 00:00 UTC,
    # delivered before October closes
    metering.record_events(
        [
            subscription_changed("acc-downgrade", "grow", "2026-09-01T00:00:00Z", addon_contacts=20),
            subscription_changed("acc-downgrade", "start", "2026-11-01T00:00:00Z"),
        ]
    )
    metering.record_events(
        [status_renamed("acc-downgrade", "2026-10-05T09:00:00Z", contact_ids=contact_ids("con", 300))]
    )
    # When October closes
    metering.close(CLOSE_DUE)
    # Then October is billed on grow + 20 add-ons (allowance 270): 30 over, 750 cents
    [invoice] = metering.report()["invoices"]
    assert (invoice["plan"], invoice["addonContacts"], invoice["allowance"], invoice["amountCents"]) == (
        "grow",
        20,
        270,
        750,
    )


def test_the_period_of_a_berlin_account_closes_at_its_local_month_end_plus_grace(metering: Metering) -> None:
    # Given a Berlin account on start, with 51 contacts on 31 October local time, one of them at 23:59:59
    # local (22:59:59 UTC), and one contact at 00:00 local on 1 November (23:00 UTC on 31 October)
    metering.record_events(
        [subscription_changed("acc-berlin", "start", "2026-09-01T00:00:00Z", timezone="Europe/Berlin")]
    )
    metering.record_events(
        [
            status_renamed("acc-berlin", "2026-10-31T10:00:00Z", contact_ids=contact_ids("con", 50)),
            contact_event("acc-berlin", "con-0051", "2026-10-31T22:59:59Z"),
            contact_event("acc-berlin", "con-0052", "2026-10-31T23:00:00Z"),
        ]
    )
    # When the close runs before and at October's Berlin end plus grace (2026-11-01T05:00Z)
    metering.close("2026-11-01T04:00:00Z")
    before = metering.report()["invoices"]
    metering.close("2026-11-01T05:00:00Z")
    # Then nothing is billed before that instant; then October is billed with 51 contacts
    assert before == []
    assert metering.active_contacts("acc-berlin", "2026-11") == 1
    assert invoiced_amounts(metering) == {"acc-berlin": 25}


def test_a_close_request_sent_before_the_period_is_due_leaves_the_period_open(metering: Metering) -> None:
    # Given 55 October contacts on start
    given_usage(metering, "acc-early", "start", 55)
    # When InvoiceAccount receives a close request as of a time before October's end plus grace
    response = metering.invoice_requests(
        [{"accountId": "acc-early", "period": OCTOBER, "asOf": "2026-10-31T12:00:00Z"}]
    )
    # And another October contact becomes active afterwards, well within the period
    _, recorded = metering.record_events([contact_event("acc-early", "con-0056", "2026-10-31T18:00:00Z")])
    # Then the early request billed nothing and did not seal the period: the new contact counts
    assert failed_ids(response) == []
    assert failed_ids(recorded) == []
    assert metering.report()["late"] == []
    assert metering.active_contacts("acc-early", OCTOBER) == 56
    # And the real close bills all 56
    metering.close(CLOSE_DUE)
    assert invoiced_amounts(metering) == {"acc-early": 150}
