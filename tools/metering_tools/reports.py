"""SPEC §4's report of a metering table, from two Scans of all of it: for replays, tests and small tables."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from metering.model import PeriodRef, PeriodSeal
from metering.rules import History, Subscription
from metering.store.alerts import Alerts
from metering.store.codec import Item, text
from metering.store.invoices import decode_invoice
from metering.store.keys import CONTACT_PREFIX, family, key_of, ref_from_pk
from metering.store.seals import decode_seal
from metering.store.subscriptions import decode_subscription

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

Row = dict[str, Any]


def read_report(
    client: DynamoDBClient, table_name: str, default_timezone: str, grace: timedelta
) -> dict[str, list[Row]]:
    """Usage counts each period's contact items; `closed` says whether the period's close has sealed it."""

    def scan(condition: str, **options: Any) -> list[Item]:
        values = {":contact": {"S": CONTACT_PREFIX}}
        pages = client.get_paginator("scan").paginate(
            TableName=table_name, FilterExpression=condition, ExpressionAttributeValues=values, **options
        )
        return [item for page in pages for item in page.get("Items", [])]

    contacts = scan("begins_with(sk, :contact) AND sk <> :contact", ProjectionExpression="pk")
    items = _Items()
    for item in scan("NOT begins_with(sk, :contact)"):
        items.add(item)
    usage = items.usage(Counter(text(item, "pk") for item in contacts), default_timezone, grace)
    by_period = itemgetter("accountId", "period")
    return {
        "invoices": sorted(items.invoices, key=by_period),
        "usage": sorted(usage, key=by_period),
        "alerts": sorted(items.alerts, key=itemgetter("accountId", "period", "thresholdPercent")),
        "rejected": sorted(items.rejected.values(), key=itemgetter("eventId")),
        "late": sorted(items.late, key=itemgetter("accountId", "period", "eventId")),
    }


@dataclass(slots=True)
class _Items:
    """The table's items other than contacts, as report rows, plus what usage needs to say `closed`."""

    invoices: list[Row] = field(default_factory=list)
    alerts: list[Row] = field(default_factory=list)
    rejected: dict[str, Row] = field(default_factory=dict)
    late: list[Row] = field(default_factory=list)
    changes: defaultdict[str, list[Subscription]] = field(default_factory=lambda: defaultdict(list))
    seals: dict[str, PeriodSeal] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        kind = family(*key_of(item))
        if kind == "rejected":
            event_id = text(item, "eventId")
            self.rejected[event_id] = {"eventId": event_id, "reason": text(item, "reason")}
        elif kind == "subscription":
            change = decode_subscription(item)
            self.changes[change.account_id].append(change)
        elif kind == "close state":
            seal = decode_seal(item)
            self.seals[seal.period] = seal
        elif kind == "invoice":
            detail = decode_invoice(item).as_detail()
            del detail["invoiceId"], detail["issuedAt"]
            self.invoices.append(detail)
        elif kind == "alerts":
            ref, claims = Alerts.decode(item)
            self.alerts += [
                {**_period_row(ref), "thresholdPercent": percent, "allowance": claim.allowance}
                for percent, claim in claims.items()
            ]
        elif kind == "late":
            self.late.append({"eventId": text(item, "eventId"), **_period_row(ref_from_pk(text(item, "pk")))})

    def usage(self, counts: Counter[str], default_timezone: str, grace: timedelta) -> Iterator[Row]:
        for pk, active in counts.items():
            ref = ref_from_pk(pk)
            changes = self.changes.get(ref.account_id, ())
            history = History.of(changes, default_timezone).for_period(ref.period)
            seal = self.seals.get(ref.period, PeriodSeal(ref.period))
            closed = seal.seals(history.close_instant(ref.period, grace))
            yield {**_period_row(ref), "activeContacts": active, "closed": closed}


def _period_row(ref: PeriodRef) -> Row:
    return {"accountId": ref.account_id, "period": ref.period}
