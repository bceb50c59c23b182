"""What a metering table says, in the wire form of SPEC §4: invoices, usage, alerts, rejected and late events.

It reads the whole table (two Scans), so it is for replays, tests and small tables, never the hot path."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
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


Row = dict[str, Any]


def read_report(
    client: DynamoDBClient, table_name: str, default_timezone: str, grace: timedelta
) -> dict[str, list[Row]]:
    """Every list of the SPEC §4 report, each sorted by account, period, then threshold or event id. Usage
    counts the contact items of each period; `closed` says whether the period's close has sealed it."""
    contact_pks = scan(
        client,
        table_name,
        FilterExpression="begins_with(sk, :contact) AND sk <> :tally",
        ExpressionAttributeValues={":contact": {"S": CONTACT_PREFIX}, ":tally": {"S": CONTACT_PREFIX}},
        ProjectionExpression="pk",
    )
    items = _Items()
    for item in scan(
        client,
        table_name,
        FilterExpression="NOT begins_with(sk, :contact)",
        ExpressionAttributeValues={":contact": {"S": CONTACT_PREFIX}},
    ):
        items.add(item)
    usage = items.usage(Counter(text(item, "pk") for item in contact_pks), default_timezone, grace)
    return {
        "invoices": sorted(items.invoices, key=lambda row: (row["accountId"], row["period"])),
        "usage": sorted(usage, key=lambda row: (row["accountId"], row["period"])),
        "alerts": sorted(
            items.alerts, key=lambda row: (row["accountId"], row["period"], row["thresholdPercent"])
        ),
        "rejected": sorted(items.rejected.values(), key=lambda row: row["eventId"]),
        "late": sorted(items.late, key=lambda row: (row["accountId"], row["period"], row["eventId"])),
    }


@dataclass(slots=True)
class _Items:
    """The table's items other than contacts, as report rows, plus what usage needs to say `closed`."""

    invoices: list[Row] = field(default_factory=list)
    alerts: list[Row] = field(default_factory=list)
    rejected: dict[str, Row] = field(default_factory=dict)
    late: list[Row] = field(default_factory=list)
    changes: defaultdict[str, list[Subscription]] = field(default_factory=lambda: defaultdict(list))
    states: dict[str, CloseState] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        pk, sk = key_of(item)
        kind = family(pk, sk)
        if kind == "rejected":
            self.rejected[text(item, "eventId")] = {
                "eventId": text(item, "eventId"),
                "reason": text(item, "reason"),
            }
        elif kind == "subscription":
            change = decode_subscription(item)
            self.changes[change.account_id].append(change)
        elif kind == "close state":
            state = decode_state(item)
            self.states[state.period] = state
        elif kind == "invoice":
            detail = decode_invoice(item).as_detail()
            del detail["invoiceId"], detail["issuedAt"]
            self.invoices.append(detail)
        elif kind == "alerts":
            ref, claims = Alerts.decode(item)
            self.alerts += [
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
            self.late.append(
                {"eventId": text(item, "eventId"), "accountId": ref.account_id, "period": ref.period}
            )

    def usage(self, counts: Counter[str], default_timezone: str, grace: timedelta) -> list[Row]:
        rows = []
        for pk, active in counts.items():
            ref = ref_from_pk(pk)
            history = History.of(self.changes.get(ref.account_id, ()), default_timezone).for_period(
                ref.period
            )
            closed = self.states.get(ref.period, CloseState(ref.period)).seals(
                history.close_instant(ref.period, grace)
            )
            rows.append(
                {
                    "accountId": ref.account_id,
                    "period": ref.period,
                    "activeContacts": active,
                    "closed": closed,
                }
            )
        return rows
