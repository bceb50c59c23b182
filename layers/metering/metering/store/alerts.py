"""Usage alerts of a period: one attribute per threshold, claimed once by a conditional write, and the
tally of a large period.

One top-level attribute per threshold (`alert80`, `alert100`), so the first claim creates the item and each
claim conditions only on its own threshold. `tally` is what the batches of a large period added after they
wrote their contacts: a bound that says when the exact count is worth reading, never a count itself."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from metering.model import AlertRecord, PeriodRef
from metering.rules import utc_iso
from metering.store.codec import Item, number, number_value, string_value, text
from metering.store.keys import alerts_key, ref_from_pk
from metering.store.table import Conflict, Table

ALERT_PREFIX = "alert"
TALLY = "tally"


def _attribute(percent: int) -> str:
    return f"{ALERT_PREFIX}{percent}"


class Alerts:
    def __init__(self, table: Table) -> None:
        self._table = table

    def read_claims(self, ref: PeriodRef) -> dict[int, AlertRecord]:
        """The thresholds claimed in the period (eventually consistent: a stale miss is settled by the
        conditional claim that follows it)."""
        found = list(self._table.batch_get([alerts_key(ref)]))
        return self.decode(found[0])[1] if found else {}

    @staticmethod
    def decode(item: Item) -> tuple[PeriodRef, dict[int, AlertRecord]]:
        ref = ref_from_pk(text(item, "pk"))
        return ref, {
            int(name.removeprefix(ALERT_PREFIX)): _record(
                ref, int(name.removeprefix(ALERT_PREFIX)), value["M"]
            )
            for name, value in item.items()
            if name.startswith(ALERT_PREFIX)
        }

    def claim(self, alert: AlertRecord) -> AlertRecord | None:
        """Record that a threshold was reached. None for the one caller that records it first (a second try
        of a claim that took effect finds itself stored, and is that caller); the claim already stored for
        everyone else."""
        outcome = self._table.write(
            Key=alerts_key(alert.ref),
            UpdateExpression="SET #alert = :alert",
            ConditionExpression="attribute_not_exists(#alert)",
            ExpressionAttributeNames={"#alert": _attribute(alert.threshold_percent)},
            ExpressionAttributeValues={
                ":alert": {
                    "M": {
                        "allowance": number_value(alert.allowance),
                        "activeContacts": number_value(alert.active_contacts),
                        "plan": string_value(alert.plan),
                        "reachedAt": string_value(alert.reached_at),
                        "claimedAt": number_value(alert.claimed_at),
                        "claimer": string_value(alert.claimer),
                    }
                }
            },
        )
        if isinstance(outcome, Conflict):
            stored = self.decode(outcome.item)[1][alert.threshold_percent]
            return None if stored.claimer == alert.claimer else stored
        return None

    def add_to_tally(self, ref: PeriodRef, contacts: int) -> tuple[int, dict[int, AlertRecord]]:
        """Add a batch's new contacts to the period's tally; the tally after it, and the claims stored."""
        response = self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=alerts_key(ref),
            UpdateExpression="ADD #tally :contacts",
            ExpressionAttributeNames={"#tally": TALLY},
            ExpressionAttributeValues={":contacts": number_value(contacts)},
            ReturnValues="ALL_NEW",
        )
        answer: Item = dict(response)
        item: Item = answer.get("Attributes", {})
        return number(item, TALLY), self.decode(item)[1]

    def mark_published(self, ref: PeriodRef, percents: Sequence[int]) -> None:
        names = {f"#a{index}": _attribute(percent) for index, percent in enumerate(percents)}
        self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=alerts_key(ref),
            UpdateExpression="SET " + ", ".join(f"{name}.publishedAt = :at" for name in names),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":at": string_value(utc_iso(datetime.now(UTC)))},
        )


def _record(ref: PeriodRef, percent: int, value: Item) -> AlertRecord:
    return AlertRecord(
        ref=ref,
        threshold_percent=percent,
        allowance=number(value, "allowance"),
        active_contacts=number(value, "activeContacts"),
        plan=text(value, "plan"),
        reached_at=text(value, "reachedAt"),
        claimed_at=number(value, "claimedAt"),
        claimer=text(value, "claimer"),
        published="publishedAt" in value,
    )
