"""The one module that knows DynamoDB: every key format, expression and error mapping lives here.

Single-table layout (docs/design.md explains it):

| item                 | pk                        | sk                          |
|----------------------|---------------------------|-----------------------------|
| period summary       | `{account}#{period}`      | `summary`                   |
| active contact       | `{account}#{period}`      | `contact#{contactId}`       |
| late event           | `{account}#{period}`      | `late#{eventId}`            |
| invoice              | `{account}#{period}`      | `invoice`                   |
| subscription history | `{account}#subscriptions` | `history` (one attribute `change#{eventId}` per change) |
| rejected event       | `#rejected#{YYYY-MM}`     | `{eventId}`                 |

Ids match `^[A-Za-z0-9]...` without `#`, so no account can forge another item's key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from metering import aws
from metering.model import (
    Activation,
    AlertRecord,
    ContactRecord,
    Invoice,
    LateEvent,
    PeriodClosed,
    PeriodRef,
    PeriodSummary,
    Rejection,
    StoreUnavailable,
)
from metering.rules import InvoiceLines, Subscription, utc_iso

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

OPEN_PERIODS_INDEX = "OpenPeriods"
SUMMARY_SK = "summary"
INVOICE_SK = "invoice"
CONTACT_PREFIX = "contact#"
LATE_PREFIX = "late#"
REJECTED_PREFIX = "#rejected#"
SUBSCRIPTIONS_SUFFIX = "#subscriptions"
HISTORY_SK = "history"
CHANGE_PREFIX = "change#"
OPEN_PERIODS_PARTITION = "open"
PERIOD_STATE_PROJECTION = (
    "pk, sk, activeContacts, closedAt, outcome, alerts, recent, eventId, detailType, occurredAt, attempt"
)

CONTACT_RETENTION = timedelta(days=400)
BATCH_GET_LIMIT = 100
BATCH_WRITE_LIMIT = 25
WRITE_THREADS = 8
CONTACT_WRITE_ROUNDS = 4
"""Tries of a contact write within one attempt before the attempt gives up (botocore retries inside each)."""
STALLED_RESUBMISSIONS = 6
"""Resubmissions of a batch request in a row without progress before it gives up."""

Item = dict[str, Any]


def period_pk(ref: PeriodRef) -> str:
    return f"{ref.account_id}#{ref.period}"


def ref_from_pk(pk: str) -> PeriodRef:
    account_id, period = pk.rsplit("#", 1)
    return PeriodRef(account_id, period)


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _epoch(instant: datetime) -> dict[str, str]:
    return _n(int(instant.timestamp()))


def _key(pk: str, sk: str) -> dict[str, dict[str, str]]:
    return {"pk": _s(pk), "sk": _s(sk)}


def _text(item: Item, name: str, default: str = "") -> str:
    value = item.get(name)
    return str(value["S"]) if value else default


def _int(item: Item, name: str) -> int:
    value = item.get(name)
    return int(value["N"]) if value else 0


def _old_item(exc: ClientError) -> Item | None:
    """The item a failed condition returned (ReturnValuesOnConditionCheckFailure=ALL_OLD)."""
    response: dict[str, Any] = dict(exc.response)
    item: Item | None = response.get("Item")
    return item


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class DynamoStore:
    """Reads and writes of the metering table; domain code sees only the values of `metering.model`."""

    def __init__(
        self, table_name: str, client: DynamoDBClient | None = None, write_concurrency: int = WRITE_THREADS
    ) -> None:
        self._table = table_name
        self._client = client
        self._writers = ThreadPoolExecutor(max_workers=write_concurrency, thread_name_prefix="ddb-write")

    @property
    def client(self) -> DynamoDBClient:
        return self._client or aws.dynamodb()

    def _call[T](self, operation: Callable[..., T], **kwargs: Any) -> T:
        """Run one API call; throttling and server faults that outlive botocore's retries become
        `StoreUnavailable`, so callers retry only the work that depends on it."""
        try:
            return operation(**kwargs)
        except ClientError as exc:
            if _error_code(exc) in {"ConditionalCheckFailedException", "TransactionCanceledException"}:
                raise
            raise StoreUnavailable(f"DynamoDB {_error_code(exc) or 'error'}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"DynamoDB unreachable: {exc}") from exc

    # ---- reads of the recording path ----

    def read_period_state(
        self, refs: Iterable[PeriodRef], contacts: Iterable[tuple[PeriodRef, str]]
    ) -> tuple[dict[PeriodRef, PeriodSummary], dict[tuple[PeriodRef, str], ContactRecord]]:
        """Summaries of `refs` and which of `contacts` are already active, in as few BatchGetItem calls
        as the 100-key limit allows (eventually consistent: a miss is settled by the conditional write)."""
        keys = [_key(period_pk(ref), SUMMARY_SK) for ref in refs]
        keys += [_key(period_pk(ref), CONTACT_PREFIX + contact_id) for ref, contact_id in contacts]
        summaries: dict[PeriodRef, PeriodSummary] = {}
        existing: dict[tuple[PeriodRef, str], ContactRecord] = {}
        for item in self._batch_get(keys, PERIOD_STATE_PROJECTION):
            ref, sk = ref_from_pk(_text(item, "pk")), _text(item, "sk")
            if sk == SUMMARY_SK:
                summaries[ref] = _summary(ref, item)
            else:
                record = _contact(item)
                existing[(ref, record.contact_id)] = record
        return summaries, existing

    def repair_count(self, ref: PeriodRef, settled: Callable[[str], bool], period_end: datetime) -> int:
        """Set the running count to the contact items whose attempts are settled (applied, or too old to
        still be running) plus those whose attempts are recorded as applied, without losing a concurrent
        increment: the write is conditioned on the count it replaces. Returns the contacts added.
        This reads the whole period and runs only when a crashed attempt may have left contacts uncounted."""
        pk = period_pk(ref)
        for delay in _backoff():
            response = self._call(
                self.client.get_item,
                TableName=self._table,
                Key=_key(pk, SUMMARY_SK),
                ProjectionExpression="activeContacts, recent, closedAt",
                ConsistentRead=True,
            )
            summary = response.get("Item", {})
            if "closedAt" in summary:
                raise PeriodClosed(pk)
            seen = _int(summary, "activeContacts")
            applied = set(summary.get("recent", {}).get("M", {}))
            should = 0
            for page in self._query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues={":pk": _s(pk), ":prefix": _s(CONTACT_PREFIX)},
                ProjectionExpression="attempt",
                ConsistentRead=True,
            ):
                should += sum(
                    1
                    for item in page.get("Items", [])
                    if _text(item, "attempt") in applied or settled(_text(item, "attempt"))
                )
            try:
                self._call(
                    self.client.update_item,
                    TableName=self._table,
                    Key=_key(pk, SUMMARY_SK),
                    UpdateExpression=f"SET activeContacts = :should, recent = if_not_exists(recent, :none), "
                    f"{SUMMARY_BOOKKEEPING}",
                    ConditionExpression="activeContacts = :seen AND attribute_not_exists(closedAt)"
                    if summary
                    else "attribute_not_exists(pk)",
                    ExpressionAttributeValues={
                        ":should": _n(should),
                        ":none": {"M": {}},
                        **({":seen": _n(seen)} if summary else {}),
                        **_summary_values(ref, period_end),
                    },
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                time.sleep(delay)
                continue
            return should - seen
        raise StoreUnavailable(f"count of {pk} kept changing during its repair")

    def load_subscriptions(self, account_ids: Iterable[str]) -> dict[str, list[Subscription]]:
        """The full subscription history of each account: one item per account, read in one BatchGetItem."""
        accounts = sorted(set(account_ids))
        histories: dict[str, list[Subscription]] = {account_id: [] for account_id in accounts}
        keys = [_key(account_id + SUBSCRIPTIONS_SUFFIX, HISTORY_SK) for account_id in accounts]
        for item in self._batch_get(keys, projection=None):
            account_id = _text(item, "pk").removesuffix(SUBSCRIPTIONS_SUFFIX)
            histories[account_id] = [
                _subscription(account_id, value["M"])
                for name, value in sorted(item.items())
                if name.startswith(CHANGE_PREFIX)
            ]
        return histories

    # ---- writes of the recording path ----

    def insert_contacts(
        self, activations: Sequence[Activation], attempt: str, expires_after: datetime
    ) -> tuple[list[Activation], list[ContactRecord]]:
        """Conditionally create one item per contact. Returns the activations this attempt stored and the
        records that already existed. A write that failed is tried again within the attempt (the token makes
        that safe: a write that succeeded but whose answer was lost comes back carrying it, so it is still
        ours); StoreUnavailable only if some write keeps failing."""
        expires_at = _epoch(expires_after + CONTACT_RETENTION)

        def put(activation: Activation) -> ContactRecord | StoreUnavailable | None:
            item = {
                **_key(period_pk(activation.ref), CONTACT_PREFIX + activation.contact_id),
                "eventId": _s(activation.event_id),
                "detailType": _s(activation.detail_type),
                "occurredAt": _s(utc_iso(activation.occurred_at)),
                "attempt": _s(attempt),
                "expiresAt": expires_at,
            }
            try:
                old = self._create(item)
            except StoreUnavailable as exc:
                return exc
            if old is None:
                return None
            record = _contact(old)
            return None if record.attempt == attempt else record

        inserted: list[Activation] = []
        existing: list[ContactRecord] = []
        pending = list(activations)
        for delay in (0.0, *_backoff(CONTACT_WRITE_ROUNDS - 1)):
            time.sleep(delay)
            failures: list[tuple[Activation, StoreUnavailable]] = []
            for activation, outcome in zip(pending, self._writers.map(put, pending), strict=True):
                if isinstance(outcome, StoreUnavailable):
                    failures.append((activation, outcome))
                elif outcome is None:
                    inserted.append(activation)
                else:
                    existing.append(outcome)
            if not failures:
                return inserted, existing
            pending = [activation for activation, _ in failures]
        raise failures[0][1]

    def apply_attempt(
        self,
        ref: PeriodRef,
        attempt: str,
        contacts: int,
        *,
        period_end: datetime,
        applied_at: datetime,
        forget: Iterable[str] = (),
    ) -> PeriodSummary | None:
        """Add an attempt's new contacts to the period count in one conditional UpdateItem that also records
        the attempt in the summary's `recent` map, so the same attempt can never be added twice (a retry of
        a write whose answer was lost finds itself there). Attempts in `forget` are dropped from the map.
        Returns the summary after the write, None when this attempt was applied before.
        Raises PeriodClosed when the period is sealed."""
        pk = period_pk(ref)
        values = {":n": _n(contacts), ":at": _epoch(applied_at), **_summary_values(ref, period_end)}
        bookkeeping = SUMMARY_BOOKKEEPING
        stale = {f"#old{index}": token for index, token in enumerate(sorted(set(forget) - {attempt}))}
        for _ in range(3):
            try:
                response = self._call(
                    self.client.update_item,
                    TableName=self._table,
                    Key=_key(pk, SUMMARY_SK),
                    UpdateExpression=f"ADD activeContacts :n SET recent.#attempt = :at, {bookkeeping}"
                    + (" REMOVE " + ", ".join(f"recent.{name}" for name in stale) if stale else ""),
                    ConditionExpression="attribute_exists(recent) AND attribute_not_exists(recent.#attempt) "
                    "AND attribute_not_exists(closedAt)",
                    ExpressionAttributeNames={"#attempt": attempt, **stale},
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return _summary(ref, response["Attributes"])
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                old = _old_item(exc) or {}
            if attempt in old.get("recent", {}).get("M", {}):
                return None  # applied before the seal, whose condition failed this retry
            if "closedAt" in old:
                raise PeriodClosed(pk)
            try:
                response = self._call(
                    self.client.update_item,
                    TableName=self._table,
                    Key=_key(pk, SUMMARY_SK),
                    UpdateExpression=f"ADD activeContacts :n SET recent = :recent, {bookkeeping}",
                    ConditionExpression="attribute_not_exists(recent)",
                    ExpressionAttributeValues={
                        **{name: value for name, value in values.items() if name != ":at"},
                        ":recent": {"M": {attempt: _epoch(applied_at)}},
                    },
                    ReturnValues="ALL_NEW",
                )
                return _summary(ref, response["Attributes"])
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
        raise StoreUnavailable(f"summary of {pk} changed shape during the update")

    def delete_contacts(self, ref: PeriodRef, contact_ids: Iterable[str], attempt: str) -> None:
        """Undo an attempt's contacts in a period that sealed before they were counted (they become late)."""
        pk = period_pk(ref)

        def delete(contact_id: str) -> None:
            try:
                self._call(
                    self.client.delete_item,
                    TableName=self._table,
                    Key=_key(pk, CONTACT_PREFIX + contact_id),
                    ConditionExpression="attempt = :attempt",
                    ExpressionAttributeValues={":attempt": _s(attempt)},
                )
            except ClientError:
                return

        list(self._writers.map(delete, contact_ids))

    def claim_alert(self, alert: AlertRecord, needed_contacts: int) -> bool:
        """Record that a threshold was reached; true only for the one caller that records it first."""
        try:
            self._call(
                self.client.update_item,
                TableName=self._table,
                Key=_key(period_pk(alert.ref), SUMMARY_SK),
                UpdateExpression="SET alerts.#percent = :alert",
                ConditionExpression="attribute_not_exists(alerts.#percent) AND activeContacts >= :needed",
                ExpressionAttributeNames={"#percent": str(alert.threshold_percent)},
                ExpressionAttributeValues={
                    ":needed": _n(needed_contacts),
                    ":alert": {
                        "M": {
                            "allowance": _n(alert.allowance),
                            "activeContacts": _n(alert.active_contacts),
                            "plan": _s(alert.plan),
                            "reachedAt": _s(alert.reached_at),
                            "claimedAt": _n(alert.claimed_at),
                        }
                    },
                },
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def mark_alerts_published(self, ref: PeriodRef, percents: Sequence[int]) -> None:
        names = {f"#p{index}": str(percent) for index, percent in enumerate(percents)}
        self._call(
            self.client.update_item,
            TableName=self._table,
            Key=_key(period_pk(ref), SUMMARY_SK),
            UpdateExpression="SET " + ", ".join(f"alerts.{name}.publishedAt = :at" for name in names),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":at": _s(utc_iso(datetime.now(UTC)))},
        )

    def record_late(self, late: LateEvent) -> bool:
        """Keep a late event once per event id; true when this call stored it."""
        item = {
            **_key(period_pk(late.ref), LATE_PREFIX + late.event_id),
            "eventId": _s(late.event_id),
            "detailType": _s(late.detail_type),
            "occurredAt": _s(late.occurred_at),
            "receivedAt": _s(late.received_at),
        }
        return self._create(item) is None

    def save_rejections(self, rejections: Sequence[Rejection]) -> None:
        """Store rejected events by id (a redelivery overwrites the same item)."""
        self._batch_write(
            {
                **_key(REJECTED_PREFIX + rejection.received_at[:7], rejection.event_id),
                "eventId": _s(rejection.event_id),
                "reason": _s(rejection.reason),
                "raw": _s(rejection.raw),
                "receivedAt": _s(rejection.received_at),
            }
            for rejection in rejections
        )

    def save_subscriptions(self, subscriptions: Sequence[Subscription]) -> None:
        """Add changes to their account's history item, one attribute per change named by its event id,
        so a redelivery rewrites the same attribute and concurrent changes never overwrite each other."""
        by_account: dict[str, list[Subscription]] = {}
        for subscription in subscriptions:
            by_account.setdefault(subscription.account_id, []).append(subscription)
        for account_id, changes in by_account.items():
            names = {f"#c{index}": CHANGE_PREFIX + change.event_id for index, change in enumerate(changes)}
            self._call(
                self.client.update_item,
                TableName=self._table,
                Key=_key(account_id + SUBSCRIPTIONS_SUFFIX, HISTORY_SK),
                UpdateExpression="SET " + ", ".join(f"{name} = :c{name[2:]}" for name in names),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={
                    f":c{index}": {"M": _subscription_attributes(change)}
                    for index, change in enumerate(changes)
                },
            )

    # ---- period close ----

    def due_periods(self, period_end_before: datetime) -> list[PeriodRef]:
        """Open periods that ended at or before the cut-off, from the sparse open-periods index. One index
        partition: it is written once when a period opens and once when it closes, far below its limits."""
        return [
            ref_from_pk(_text(item, "pk"))
            for page in self._query(
                IndexName=OPEN_PERIODS_INDEX,
                KeyConditionExpression="openPeriod = :open AND openPeriodEnd <= :cutoff",
                ExpressionAttributeValues={
                    ":open": _s(OPEN_PERIODS_PARTITION),
                    ":cutoff": _s(utc_iso(period_end_before)),
                },
            )
            for item in page.get("Items", [])
        ]

    def seal_period(
        self, ref: PeriodRef, closed_at: datetime, period_end_before: datetime
    ) -> PeriodSummary | None:
        """Stop the count: later increments fail their condition and become late. Idempotent; None (and
        nothing sealed) when the period has not ended before `period_end_before` or has no summary."""
        try:
            response = self._call(
                self.client.update_item,
                TableName=self._table,
                Key=_key(period_pk(ref), SUMMARY_SK),
                UpdateExpression="SET closedAt = if_not_exists(closedAt, :closedAt)",
                ConditionExpression="attribute_exists(closedAt) OR periodEnd <= :cutoff",
                ExpressionAttributeValues={
                    ":closedAt": _s(utc_iso(closed_at)),
                    ":cutoff": _s(utc_iso(period_end_before)),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return _summary(ref, response["Attributes"])

    def save_invoice(self, invoice: Invoice) -> Invoice:
        """Store the invoice once; a second attempt gets the one stored first."""
        lines = invoice.lines
        item = {
            **_key(period_pk(invoice.ref), INVOICE_SK),
            "invoiceId": _s(invoice.invoice_id),
            "plan": _s(lines.plan),
            "billingCycle": _s(lines.billing_cycle),
            "includedContacts": _n(lines.included_contacts),
            "addonContacts": _n(lines.addon_contacts),
            "allowance": _n(lines.allowance),
            "activeContacts": _n(lines.active_contacts),
            "overusageContacts": _n(lines.overusage_contacts),
            "unitPriceCents": _n(lines.unit_price_cents),
            "amountCents": _n(lines.amount_cents),
            "currency": _s(lines.currency),
            "issuedAt": _s(invoice.issued_at),
        }
        old = self._create(item)
        return invoice if old is None else _invoice(invoice.ref, old)

    def claim_invoice_publication(self, ref: PeriodRef, now: datetime, stale_before: datetime) -> str:
        """Take the lease to publish an invoice: `claimed` for the one caller that may publish now,
        `published` when it is done, `busy` while another caller's lease (newer than `stale_before`) holds."""
        try:
            self._call(
                self.client.update_item,
                TableName=self._table,
                Key=_key(period_pk(ref), INVOICE_SK),
                UpdateExpression="SET publishingAt = :now",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(publishedAt) "
                "AND (attribute_not_exists(publishingAt) OR publishingAt < :stale)",
                ExpressionAttributeValues={":now": _s(utc_iso(now)), ":stale": _s(utc_iso(stale_before))},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise
            return "published" if "publishedAt" in (_old_item(exc) or {}) else "busy"
        return "claimed"

    def release_invoice_publication(self, ref: PeriodRef, leased_at: datetime) -> None:
        """Give the lease back after a failed publication, so the next delivery need not wait it out."""
        try:
            self._call(
                self.client.update_item,
                TableName=self._table,
                Key=_key(period_pk(ref), INVOICE_SK),
                UpdateExpression="REMOVE publishingAt",
                ConditionExpression="publishingAt = :leasedAt",
                ExpressionAttributeValues={":leasedAt": _s(utc_iso(leased_at))},
            )
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise

    def mark_invoice_published(self, ref: PeriodRef, published_at: datetime) -> None:
        self._call(
            self.client.update_item,
            TableName=self._table,
            Key=_key(period_pk(ref), INVOICE_SK),
            UpdateExpression="SET publishedAt = if_not_exists(publishedAt, :at) REMOVE publishingAt",
            ExpressionAttributeValues={":at": _s(utc_iso(published_at))},
        )

    def finish_close(self, ref: PeriodRef, outcome: str) -> None:
        """Record how the period ended and take it off the open-periods index (the last step of a close)."""
        self._call(
            self.client.update_item,
            TableName=self._table,
            Key=_key(period_pk(ref), SUMMARY_SK),
            UpdateExpression="SET outcome = :outcome REMOVE openPeriod, openPeriodEnd",
            ExpressionAttributeValues={":outcome": _s(outcome)},
        )

    # ---- reports (operators and `simulate`; they read whole partitions or the table) ----

    def scan_items(self, **filters: Any) -> Iterator[Item]:
        """Every item of the table (or those `filters` keep), for reports over small tables (simulate,
        tests)."""
        for page in self.client.get_paginator("scan").paginate(TableName=self._table, **filters):
            yield from page.get("Items", [])

    def read_report(self) -> dict[str, Any]:
        """Invoices, usage, alerts, rejected and late events of the whole table in the wire form of SPEC §4,
        each list sorted by account, period, then threshold or event id."""
        invoices, usage, alerts, rejected, late = [], [], [], {}, []
        not_contacts = {
            "FilterExpression": "NOT begins_with(sk, :contact)",
            "ExpressionAttributeValues": {":contact": _s(CONTACT_PREFIX)},
        }
        for item in self.scan_items(**not_contacts):
            pk, sk = _text(item, "pk"), _text(item, "sk")
            if pk.startswith(REJECTED_PREFIX):
                rejected[_text(item, "eventId")] = {
                    "eventId": _text(item, "eventId"),
                    "reason": _text(item, "reason"),
                }
                continue
            if pk.endswith(SUBSCRIPTIONS_SUFFIX):
                continue
            ref = ref_from_pk(pk)
            if sk == INVOICE_SK:
                detail = _invoice(ref, item).as_detail()
                del detail["invoiceId"], detail["issuedAt"]
                invoices.append(detail)
            elif sk == SUMMARY_SK:
                summary = _summary(ref, item)
                if summary.active_contacts > 0:
                    usage.append(
                        {
                            "accountId": ref.account_id,
                            "period": ref.period,
                            "activeContacts": summary.active_contacts,
                            "closed": summary.closed_at is not None,
                        }
                    )
                alerts += [
                    {
                        "accountId": ref.account_id,
                        "period": ref.period,
                        "thresholdPercent": int(percent),
                        "allowance": _int(value["M"], "allowance"),
                    }
                    for percent, value in item.get("alerts", {}).get("M", {}).items()
                ]
            elif sk.startswith(LATE_PREFIX):
                late.append(
                    {"eventId": _text(item, "eventId"), "accountId": ref.account_id, "period": ref.period}
                )
        return {
            "invoices": sorted(invoices, key=lambda row: (row["accountId"], row["period"])),
            "usage": sorted(usage, key=lambda row: (row["accountId"], row["period"])),
            "alerts": sorted(
                alerts, key=lambda row: (row["accountId"], row["period"], row["thresholdPercent"])
            ),
            "rejected": sorted(rejected.values(), key=lambda row: row["eventId"]),
            "late": sorted(late, key=lambda row: (row["accountId"], row["period"], row["eventId"])),
        }

    def summaries(self) -> Iterator[PeriodSummary]:
        """Every period summary of the table (a filtered Scan: operator checks, not a hot path)."""
        for page in self.client.get_paginator("scan").paginate(
            TableName=self._table,
            FilterExpression="sk = :summary",
            ExpressionAttributeValues={":summary": _s(SUMMARY_SK)},
        ):
            for item in page.get("Items", []):
                yield _summary(ref_from_pk(_text(item, "pk")), item)

    def summary(self, ref: PeriodRef) -> PeriodSummary | None:
        response = self._call(
            self.client.get_item,
            TableName=self._table,
            Key=_key(period_pk(ref), SUMMARY_SK),
            ConsistentRead=True,
        )
        item = response.get("Item")
        return _summary(ref, item) if item else None

    def contacts(self, ref: PeriodRef) -> Iterator[ContactRecord]:
        """The active contacts of a period with the first event that made each active."""
        for page in self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": _s(period_pk(ref)), ":prefix": _s(CONTACT_PREFIX)},
        ):
            for item in page.get("Items", []):
                yield _contact(item)

    def count_contacts(self, ref: PeriodRef) -> int:
        """Contact items of a period, counted one by one (the check of the running count)."""
        return sum(
            int(page.get("Count", 0))
            for page in self._query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues={":pk": _s(period_pk(ref)), ":prefix": _s(CONTACT_PREFIX)},
                Select="COUNT",
            )
        )

    def list_rejections(self, month: str) -> list[tuple[str, str, str, str]]:
        """Rejected events received in a month: (event id, reason, received at, raw body)."""
        return [
            (_text(item, "eventId"), _text(item, "reason"), _text(item, "receivedAt"), _text(item, "raw"))
            for page in self._query(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": _s(REJECTED_PREFIX + month)},
            )
            for item in page.get("Items", [])
        ]

    def delete_rejection(self, month: str, event_id: str) -> None:
        self._call(
            self.client.delete_item, TableName=self._table, Key=_key(REJECTED_PREFIX + month, event_id)
        )

    # ---- plumbing ----

    def _create(self, item: Item) -> Item | None:
        """Put an item only if its key is new; None when it was created, else the item already there."""
        try:
            self._call(
                self.client.put_item,
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            old = _old_item(exc)
            if old is None:
                raise StoreUnavailable(
                    "conditional put failed without returning the item in the way"
                ) from exc
            return old
        return None

    def _query(self, **kwargs: Any) -> Iterator[Any]:
        start: dict[str, Any] | None = None
        while True:
            page = self._call(
                self.client.query,
                TableName=self._table,
                **kwargs,
                **({"ExclusiveStartKey": start} if start else {}),
            )
            yield page
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def _batch_get(self, keys: list[dict[str, Any]], projection: str | None) -> Iterator[Item]:
        unique = list({(key["pk"]["S"], key["sk"]["S"]): key for key in keys}.values())

        def get(pending: list[Item]) -> tuple[list[Item], list[Item]]:
            request = {"Keys": pending, **({"ProjectionExpression": projection} if projection else {})}
            response: dict[str, Any] = dict(
                self._call(self.client.batch_get_item, RequestItems={self._table: request})
            )
            unprocessed = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
            return response.get("Responses", {}).get(self._table, []), unprocessed

        for offset in range(0, len(unique), BATCH_GET_LIMIT):
            for items in _until_processed(get, unique[offset : offset + BATCH_GET_LIMIT], "BatchGetItem"):
                yield from items

    def _batch_write(self, items: Iterable[Item]) -> None:
        unique = list({(item["pk"]["S"], item["sk"]["S"]): item for item in items}.values())

        def write(pending: list[Item]) -> tuple[None, list[Item]]:
            response: dict[str, Any] = dict(
                self._call(self.client.batch_write_item, RequestItems={self._table: pending})
            )
            return None, response.get("UnprocessedItems", {}).get(self._table, [])

        for offset in range(0, len(unique), BATCH_WRITE_LIMIT):
            requests = [
                {"PutRequest": {"Item": item}} for item in unique[offset : offset + BATCH_WRITE_LIMIT]
            ]
            for _ in _until_processed(write, requests, "BatchWriteItem"):
                pass


def _until_processed[Answer](
    submit: Callable[[list[Item]], tuple[Answer, list[Item]]], pending: list[Item], operation: str
) -> Iterator[Answer]:
    """Submit a batch request until every entry is processed, yielding each answer. Unprocessed entries,
    and calls that failed beyond botocore's retries, are resubmitted with backoff (batch reads and plain
    puts are idempotent); it gives up only after `STALLED_RESUBMISSIONS` tries in a row made no progress."""
    stalled = 0
    while True:
        failure: StoreUnavailable | None = None
        try:
            answer, left = submit(pending)
        except StoreUnavailable as exc:
            failure, left = exc, pending
        else:
            yield answer
            if not left:
                return
        stalled = 0 if len(left) < len(pending) else stalled + 1
        if stalled > STALLED_RESUBMISSIONS:
            raise failure or StoreUnavailable(f"{operation} left entries unprocessed")
        time.sleep(_delay(stalled))
        pending = left


SUMMARY_BOOKKEEPING = (
    "accountId = :account, period = :period, periodEnd = if_not_exists(periodEnd, :end), "
    "openPeriod = if_not_exists(openPeriod, :open), "
    "openPeriodEnd = if_not_exists(openPeriodEnd, :end), alerts = if_not_exists(alerts, :noAlerts)"
)
"""What every write that may create a period summary sets: its identity, end and open-index keys."""


def _summary_values(ref: PeriodRef, period_end: datetime) -> Item:
    return {
        ":account": _s(ref.account_id),
        ":period": _s(ref.period),
        ":open": _s(OPEN_PERIODS_PARTITION),
        ":end": _s(utc_iso(period_end)),
        ":noAlerts": {"M": {}},
    }


def _delay(attempt: int) -> float:
    """Seconds to wait before resubmission number `attempt` (exponential from 50 ms, capped at 2 s)."""
    return min(0.05 * 2.0**attempt, 2.0)


def _backoff(attempts: int = 6) -> Iterator[float]:
    """Delays between resubmissions of a request that may succeed later."""
    for attempt in range(attempts):
        yield _delay(attempt)


def _summary(ref: PeriodRef, item: Item) -> PeriodSummary:
    alerts = item.get("alerts", {}).get("M", {})
    return PeriodSummary(
        ref=ref,
        active_contacts=_int(item, "activeContacts"),
        closed_at=_text(item, "closedAt") or None,
        outcome=_text(item, "outcome") or None,
        period_end=_text(item, "periodEnd") or None,
        alerted_percents=frozenset(int(percent) for percent in alerts),
        recent_attempts={
            token: int(value["N"]) for token, value in item.get("recent", {}).get("M", {}).items()
        },
        unpublished_alerts=tuple(
            _alert(ref, int(percent), value["M"])
            for percent, value in sorted(alerts.items())
            if "publishedAt" not in value["M"]
        ),
    )


def _alert(ref: PeriodRef, percent: int, item: Item) -> AlertRecord:
    return AlertRecord(
        ref=ref,
        threshold_percent=percent,
        allowance=_int(item, "allowance"),
        active_contacts=_int(item, "activeContacts"),
        plan=_text(item, "plan"),
        reached_at=_text(item, "reachedAt"),
        claimed_at=_int(item, "claimedAt"),
    )


def _contact(item: Item) -> ContactRecord:
    return ContactRecord(
        contact_id=_text(item, "sk").removeprefix(CONTACT_PREFIX),
        first_event_id=_text(item, "eventId"),
        first_detail_type=_text(item, "detailType"),
        first_occurred_at=_text(item, "occurredAt"),
        attempt=_text(item, "attempt"),
    )


def _subscription_attributes(subscription: Subscription) -> Item:
    attributes = {
        "effectiveAt": _s(utc_iso(subscription.effective_at)),
        "eventId": _s(subscription.event_id),
        "plan": _s(subscription.plan),
        "billingCycle": _s(subscription.billing_cycle),
        "addonContacts": _n(subscription.addon_contacts),
    }
    if subscription.timezone:
        attributes["timezone"] = _s(subscription.timezone)
    return attributes


def _subscription(account_id: str, item: Item) -> Subscription:
    return Subscription(
        account_id=account_id,
        effective_at=datetime.fromisoformat(_text(item, "effectiveAt")),
        event_id=_text(item, "eventId"),
        plan=_text(item, "plan"),  # type: ignore[arg-type]
        billing_cycle=_text(item, "billingCycle"),  # type: ignore[arg-type]
        addon_contacts=_int(item, "addonContacts"),
        timezone=_text(item, "timezone") or None,
    )


def _invoice(ref: PeriodRef, item: Item) -> Invoice:
    return Invoice(
        ref=ref,
        issued_at=_text(item, "issuedAt"),
        lines=InvoiceLines(
            plan=_text(item, "plan"),  # type: ignore[arg-type]
            billing_cycle=_text(item, "billingCycle"),  # type: ignore[arg-type]
            included_contacts=_int(item, "includedContacts"),
            addon_contacts=_int(item, "addonContacts"),
            allowance=_int(item, "allowance"),
            active_contacts=_int(item, "activeContacts"),
            overusage_contacts=_int(item, "overusageContacts"),
            unit_price_cents=_int(item, "unitPriceCents"),
            amount_cents=_int(item, "amountCents"),
            currency=_text(item, "currency"),
        ),
    )
