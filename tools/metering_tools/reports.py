"""What a metering table says, in the wire form of SPEC §4: invoices, usage, alerts, rejected and late events.

It reads the whole table (two Scans), so it is for replays, tests and small tables, never the hot path."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from metering.model import CloseState
from metering.rules import History, Subscription
from metering.store.alerts import Alerts
from metering.store.closing import decode_invoice, decode_state
from metering.store.codec import Item, text
from metering.store.keys import CONTACT_PREFIX, family, key_of, ref_from_pk
from metering.store.subscriptions import decode_subscription

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def scan(client: DynamoDBClient, table_name: str, **filters: Any) -> list[Item]:
    items: list[Item] = []
    for page in client.get_paginator("scan").paginate(TableName=table_name, **filters):
        items += page.get("Items", [])
    return items


def read_report(
    client: DynamoDBClient, table_name: str, default_timezone: str, grace: timedelta
) -> dict[str, list[dict[str, Any]]]:
    """Every list of the SPEC §4 report, each sorted by account, period, then threshold or event id. Usage
    counts the contact items of each period; `closed` says whether the period's close has sealed it."""
    contact_pks = scan(
        client,
        table_name,
        FilterExpression="begins_with(sk, :contact) AND sk <> :tally",
        ExpressionAttributeValues={":contact": {"S": CONTACT_PREFIX}, ":tally": {"S": CONTACT_PREFIX}},
        ProjectionExpression="pk",
    )
    counts = Counter(text(item, "pk") for item in contact_pks)
    others = scan(
        client,
        table_name,
        FilterExpression="NOT begins_with(sk, :contact)",
        ExpressionAttributeValues={":contact": {"S": CONTACT_PREFIX}},
    )
    invoices, alerts, rejected, late = [], [], {}, []
    changes: dict[str, list[Subscription]] = defaultdict(list)
    states: dict[str, CloseState] = {}
    for item in others:
        pk, sk = key_of(item)
        kind = family(pk, sk)
        if kind == "rejected":
            rejected[text(item, "eventId")] = {
                "eventId": text(item, "eventId"),
                "reason": text(item, "reason"),
            }
        elif kind == "subscription":
            change = decode_subscription(item)
            changes[change.account_id].append(change)
        elif kind == "close state":
            state = decode_state(item)
            states[state.period] = state
        elif kind == "invoice":
            detail = decode_invoice(item).as_detail()
            del detail["invoiceId"], detail["issuedAt"]
            invoices.append(detail)
        elif kind == "alerts":
            ref, claims = Alerts.decode(item)
            alerts += [
                {
                    "accountId": ref.account_id,
                    "period": ref.period,
                    "thresholdPercent": percent,
                    "allowance": claim.allowance,
                }
                for percent, claim in claims.items()
            ]
        elif kind == "late":
            ref = ref_from_pk(pk)
            late.append({"eventId": text(item, "eventId"), "accountId": ref.account_id, "period": ref.period})
    usage = []
    for pk, active in counts.items():
        ref = ref_from_pk(pk)
        history = History.of(changes.get(ref.account_id, ()), default_timezone).for_period(ref.period)
        state = states.get(ref.period, CloseState(ref.period))
        closed = state.seals(history.close_instant(ref.period, grace))
        usage.append(
            {"accountId": ref.account_id, "period": ref.period, "activeContacts": active, "closed": closed}
        )
    return {
        "invoices": sorted(invoices, key=lambda row: (row["accountId"], row["period"])),
        "usage": sorted(usage, key=lambda row: (row["accountId"], row["period"])),
        "alerts": sorted(alerts, key=lambda row: (row["accountId"], row["period"], row["thresholdPercent"])),
        "rejected": sorted(rejected.values(), key=lambda row: row["eventId"]),
        "late": sorted(late, key=lambda row: (row["accountId"], row["period"], row["eventId"])),
    }
