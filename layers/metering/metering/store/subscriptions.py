"""The subscription history: one item per `Subscription Changed`, spread over a few shard partitions.

One item per change keeps every item small whatever the years bring, and a batch of any size writes each
change on its own (a redelivered change conflicts with itself instead of breaking a shared expression).
The first storing of a change wins: it keeps the periods that were already sealed when it arrived."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from metering.errors import StoreUnavailable
from metering.retrying import RetryBudget
from metering.rules import Subscription, utc_iso
from metering.store.codec import Item, number, number_value, string_set, string_value, strings, text
from metering.store.keys import (
    SUBSCRIPTION_SHARDS,
    subscription_key,
    subscription_prefix,
    subscription_shard,
    subscriptions_pk,
)
from metering.store.table import Conflict, Table

AFTER_ACCOUNT = "$"
"""Sorts after `#` and before every character an id may continue with: `{account}$` follows all of an
account's changes and precedes the next account's."""


class Subscriptions:
    def __init__(self, table: Table) -> None:
        self._table = table

    def save(
        self, changes: Sequence[Subscription], budget: RetryBudget
    ) -> list[Subscription | StoreUnavailable]:
        """Store each change unless it is stored already, tried again within `budget`; returns each change as
        stored (an earlier storing of the same change wins, with the sealed periods it recorded then), or
        the failure its write ended with."""

        def put(change: Subscription) -> Subscription:
            outcome = self._table.create(_encode(change))
            return decode_subscription(outcome.item) if isinstance(outcome, Conflict) else change

        return self._table.settle_in_parallel(lambda change: budget.call(lambda: put(change)), changes)

    def histories(
        self, account_ids: Iterable[str], budget: RetryBudget
    ) -> dict[str, list[Subscription] | StoreUnavailable]:
        """Each account's changes, read consistently (a change stored by the batch before is always seen) and
        tried again within `budget`; or the failure an account's read ended with."""
        accounts = sorted(set(account_ids))
        results = self._table.settle_in_parallel(
            lambda account: budget.call(lambda: self.history(account)), accounts
        )
        return dict(zip(accounts, results, strict=True))

    def history(self, account_id: str, *, consistent: bool = True) -> list[Subscription]:
        """The account's subscription changes; consistent unless the reader only shows what it finds."""
        return [
            decode_subscription(item)
            for page in self._table.query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :account)",
                ExpressionAttributeValues={
                    ":pk": string_value(subscriptions_pk(subscription_shard(account_id))),
                    ":account": string_value(subscription_prefix(account_id)),
                },
                ConsistentRead=consistent,
            )
            for item in page.get("Items", [])
        ]

    def shard_pages(self, shard: int, after_account: str | None) -> Iterator[list[Subscription]]:
        """The changes of one shard, account by account, page by page, from after `after_account`."""
        condition = "pk = :pk" + (" AND sk > :after" if after_account else "")
        values = {":pk": string_value(subscriptions_pk(shard))}
        if after_account:
            values[":after"] = string_value(after_account + AFTER_ACCOUNT)
        for page in self._table.query(KeyConditionExpression=condition, ExpressionAttributeValues=values):
            yield [decode_subscription(item) for item in page.get("Items", [])]

    @staticmethod
    def shards() -> range:
        return range(SUBSCRIPTION_SHARDS)


def _encode(change: Subscription) -> Item:
    item: Item = {
        **subscription_key(change.account_id, change.effective_at, change.event_id),
        "accountId": string_value(change.account_id),
        "effectiveAt": string_value(utc_iso(change.effective_at)),
        "eventId": string_value(change.event_id),
        "plan": string_value(change.plan),
        "billingCycle": string_value(change.billing_cycle),
        "addonContacts": number_value(change.addon_contacts),
    }
    if change.timezone:
        item["timezone"] = string_value(change.timezone)
    if change.frozen_periods:
        item["frozen"] = string_set(change.frozen_periods)
    return item


def decode_subscription(item: Item) -> Subscription:
    return Subscription(
        account_id=text(item, "accountId"),
        effective_at=datetime.fromisoformat(text(item, "effectiveAt")),
        event_id=text(item, "eventId"),
        plan=text(item, "plan"),  # type: ignore[arg-type]
        billing_cycle=text(item, "billingCycle"),  # type: ignore[arg-type]
        addon_contacts=number(item, "addonContacts"),
        timezone=text(item, "timezone") or None,
        frozen_periods=strings(item, "frozen"),
    )
