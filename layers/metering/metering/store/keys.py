"""Every key of the metering table, in one place (docs/design.md draws the layout).

| item                | pk                          | sk                                  |
|---------------------|-----------------------------|-------------------------------------|
| active contact      | `{account}#{period}`        | `contact#{contactId}`               |
| usage alerts        | `{account}#{period}`        | `alerts`                            |
| late event          | `{account}#{period}`        | `late#{eventId}`                    |
| invoice             | `{account}#{period}`        | `invoice`                           |
| contact counter     | `{account}#{period}`        | `counter`                           |
| counter snapshot    | `{account}#{period}`        | `counter#snapshot`                  |
| invoice listing     | `{account}#invoices`        | `{period}`                          |
| subscription change | `#subscriptions#{shard}`    | `{account}#{effectiveAt}#{eventId}` |
| close state         | `#close`                    | `{period}`                          |
| rejected event      | `#rejected#{YYYY-MM}`       | `{eventId}`                         |

Ids match `^[A-Za-z0-9]...` and never contain `#`, so no account can forge another item's key, and
partitions of the system itself start with `#`, which no account id can.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from metering.model import PeriodRef
from metering.rules import utc_iso

CONTACT_PREFIX = "contact#"
ALERTS_SK = "alerts"
INVOICE_SK = "invoice"
COUNTER_SK = "counter"
SNAPSHOT_SK = "counter#snapshot"
INVOICES_SUFFIX = "#invoices"
LATE_PREFIX = "late#"
SUBSCRIPTIONS_PREFIX = "#subscriptions#"
SUBSCRIPTION_SHARDS = 16
"""Partitions the subscription history is spread over: the close job reads them in parallel and page by
page, and no single partition takes every account's changes. Changing it needs a migration of the history."""
CLOSE_PK = "#close"
REJECTED_PREFIX = "#rejected#"

Key = dict[str, dict[str, str]]


def key(pk: str, sk: str) -> Key:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def key_of(item: dict[str, Any]) -> tuple[str, str]:
    return str(item["pk"]["S"]), str(item["sk"]["S"])


def period_pk(ref: PeriodRef) -> str:
    return f"{ref.account_id}#{ref.period}"


def ref_from_pk(pk: str) -> PeriodRef:
    account_id, period = pk.rsplit("#", 1)
    return PeriodRef(account_id, period)


def contact_key(ref: PeriodRef, contact_id: str) -> Key:
    return key(period_pk(ref), CONTACT_PREFIX + contact_id)


def alerts_key(ref: PeriodRef) -> Key:
    return key(period_pk(ref), ALERTS_SK)


def invoice_key(ref: PeriodRef) -> Key:
    return key(period_pk(ref), INVOICE_SK)


def counter_key(ref: PeriodRef) -> Key:
    return key(period_pk(ref), COUNTER_SK)


def snapshot_key(ref: PeriodRef) -> Key:
    return key(period_pk(ref), SNAPSHOT_SK)


def invoices_pk(account_id: str) -> str:
    """The account's invoice listing: one entry per invoiced period, so listing reads no month without one.
    `invoices` is no `YYYY-MM`, so the partition cannot be a period's."""
    return f"{account_id}{INVOICES_SUFFIX}"


def invoice_entry_key(ref: PeriodRef) -> Key:
    return key(invoices_pk(ref.account_id), ref.period)


def late_key(ref: PeriodRef, event_id: str) -> Key:
    return key(period_pk(ref), LATE_PREFIX + event_id)


def subscription_shard(account_id: str) -> int:
    """A stable shard per account (not Python's salted `hash`): an account always reads one partition."""
    digest = hashlib.blake2b(account_id.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "big") % SUBSCRIPTION_SHARDS


def subscriptions_pk(shard: int) -> str:
    return f"{SUBSCRIPTIONS_PREFIX}{shard:02d}"


def subscription_key(account_id: str, effective_at: datetime, event_id: str) -> Key:
    return key(
        subscriptions_pk(subscription_shard(account_id)),
        f"{subscription_prefix(account_id)}{utc_iso(effective_at)}#{event_id}",
    )


def subscription_prefix(account_id: str) -> str:
    return f"{account_id}#"


def close_key(period: str) -> Key:
    return key(CLOSE_PK, period)


def rejected_pk(month: str) -> str:
    return REJECTED_PREFIX + month


def family(pk: str, sk: str) -> str:
    """The kind of item a key names, for cost attribution and reports."""
    if pk == CLOSE_PK:
        return "close state"
    if pk.startswith(SUBSCRIPTIONS_PREFIX):
        return "subscription"
    if pk.startswith(REJECTED_PREFIX):
        return "rejected"
    if sk.startswith(CONTACT_PREFIX):
        return "contact"
    if sk.startswith(LATE_PREFIX):
        return "late"
    if pk.endswith(INVOICES_SUFFIX):
        return "invoice listing"
    return {
        ALERTS_SK: "alerts",
        INVOICE_SK: "invoice",
        COUNTER_SK: "counter",
        SNAPSHOT_SK: "counter",
    }.get(sk, "other")
