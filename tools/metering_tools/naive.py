"""SPEC §6's naive recorder, measured beside the real functions on the same events as the cost baseline.

The naive design is "one invocation and one conditional PutItem per event": every activity event puts its
contact item under `attribute_not_exists` (a `Status Renamed` puts one per contact of its column), every
`Subscription Changed` puts one item, and nothing is read, batched or cached. The close then counts each
account-period's contact items with a `Select=COUNT` Query, reads the account's subscriptions with a Query,
and puts one invoice where there is overusage. Its keys follow today's layout (`{account}#{period}` /
`contact#{id}`, `{account}#subscriptions`, `invoice`), so the default classifier names its paths too.

Time zones and the set of account-periods are kept in memory: the naive design pays for no read to learn
them, which only makes it cheaper than it could be.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import boto3
from botocore.exceptions import ClientError
from metering_tools.provisioning import load_template, table_definition
from metering.rules import OVERUSAGE_UNIT_CENTS, PLANS

from metering_tools.capacity import (
    MOTO_ACCOUNT,
    CapacityMeter,
    Classifier,
    KeyCondition,
    MotoTables,
    classify_today,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

REGION = "eu-central-1"
CONTACT_PREFIX = "contact#"
SUBSCRIPTIONS_SUFFIX = "#subscriptions"
INVOICE_SK = "invoice"
SUBSCRIPTION_CHANGED = "Subscription Changed"
STATUS_RENAMED = "Status Renamed"
PLANS_BY_NAME = {str(name): plan for name, plan in PLANS.items()}
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass(frozen=True, slots=True)
class _Subscription:
    effective_at: datetime
    timezone: str | None


@dataclass(slots=True)
class NaiveRecorder:
    """One invocation per event, one conditional PutItem per contact it names."""

    table_name: str
    client: DynamoDBClient
    objects_dir: Path | None = None
    default_timezone: str = "UTC"
    invocations: int = 0
    activations: int = 0
    invoices: int = 0
    _subscriptions: dict[str, list[_Subscription]] = field(default_factory=dict)
    _periods: set[tuple[str, str]] = field(default_factory=set)

    def record(self, body: str) -> None:
        """One Lambda invocation for one envelope (the naive design has no batches)."""
        self.invocations += 1
        envelope = json.loads(body)
        detail: dict[str, Any] = envelope["detail"]
        account_id = str(detail["accountId"])
        occurred_at = datetime.fromisoformat(detail["occurredAt"])
        if envelope["detail-type"] == SUBSCRIPTION_CHANGED:
            self._subscribe(envelope["id"], account_id, occurred_at, detail)
            return
        if envelope["detail-type"] == STATUS_RENAMED:
            inline = "contactIds" in detail
            contact_ids = (
                detail["contactIds"] if inline else self._claim_checked(detail["contactIdsObject"]["key"])
            )
        else:
            contact_ids = [detail["contactId"]]
        period = occurred_at.astimezone(self._zone(account_id, occurred_at)).strftime("%Y-%m")
        self._periods.add((account_id, period))
        for contact_id in contact_ids:
            self._activate(account_id, period, str(contact_id), envelope["id"])

    def close(self) -> None:
        """Per account-period: count its contacts (Query, Select=COUNT), read the account's subscriptions
        (Query), and put an invoice when the count exceeds the allowance."""
        for account_id, period in sorted(self._periods):
            active = self._count(account_id, period)
            allowance = self._allowance(account_id, period)
            if allowance is not None and active > allowance:
                self.client.put_item(
                    TableName=self.table_name,
                    Item={
                        "pk": {"S": f"{account_id}#{period}"},
                        "sk": {"S": INVOICE_SK},
                        "activeContacts": {"N": str(active)},
                        "allowance": {"N": str(allowance)},
                        "amountCents": {"N": str((active - allowance) * OVERUSAGE_UNIT_CENTS)},
                    },
                    ConditionExpression="attribute_not_exists(pk)",
                )
                self.invoices += 1

    def _activate(self, account_id: str, period: str, contact_id: str, event_id: str) -> None:
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={
                    "pk": {"S": f"{account_id}#{period}"},
                    "sk": {"S": CONTACT_PREFIX + contact_id},
                    "eventId": {"S": event_id},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return
        self.activations += 1

    def _subscribe(
        self, event_id: str, account_id: str, effective_at: datetime, detail: dict[str, Any]
    ) -> None:
        timezone = detail.get("timezone")
        self.client.put_item(
            TableName=self.table_name,
            Item={
                "pk": {"S": account_id + SUBSCRIPTIONS_SUFFIX},
                "sk": {"S": f"{_utc_text(effective_at)}#{event_id}"},
                "plan": {"S": str(detail["plan"])},
                "addonContacts": {"N": str(detail["addonContacts"])},
                **({"timezone": {"S": str(timezone)}} if timezone else {}),
            },
        )
        self._subscriptions.setdefault(account_id, []).append(_Subscription(effective_at, timezone))

    def _zone(self, account_id: str, instant: datetime) -> ZoneInfo:
        effective = [sub for sub in self._subscriptions.get(account_id, []) if sub.effective_at <= instant]
        latest = max(effective, key=lambda sub: sub.effective_at, default=None)
        return ZoneInfo((latest.timezone if latest else None) or self.default_timezone)

    def _claim_checked(self, key: str) -> list[str]:
        if self.objects_dir is None:
            return []
        return (self.objects_dir / key).read_text(encoding="utf-8").split()

    def _count(self, account_id: str, period: str) -> int:
        paginator = self.client.get_paginator("query")
        return sum(
            page["Count"]
            for page in paginator.paginate(
                TableName=self.table_name,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :contact)",
                ExpressionAttributeValues={
                    ":pk": {"S": f"{account_id}#{period}"},
                    ":contact": {"S": CONTACT_PREFIX},
                },
                Select="COUNT",
            )
        )

    def _allowance(self, account_id: str, period: str) -> int | None:
        """Included contacts plus add-ons of the subscription in effect at the period's end; None when the
        account has none or a plan that is not billed."""
        items = self.client.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": account_id + SUBSCRIPTIONS_SUFFIX}},
        )["Items"]
        end = _utc_text(self._period_end(account_id, period))
        in_effect = [item for item in items if item["sk"]["S"].split("#")[0] < end]
        if not in_effect:
            return None
        latest = max(in_effect, key=lambda item: item["sk"]["S"])
        plan = PLANS_BY_NAME[latest["plan"]["S"]]
        return plan.included_contacts + int(latest["addonContacts"]["N"]) if plan.billed else None

    def _period_end(self, account_id: str, period: str) -> datetime:
        """Midnight starting the next month, in the zone the account has then."""
        year, month = map(int, period.split("-"))
        next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
        zone = self._zone(account_id, datetime(next_year, next_month, 1, tzinfo=UTC))
        return datetime(next_year, next_month, 1, tzinfo=zone)


def _utc_text(instant: datetime) -> str:
    """Fixed-width UTC text, which sorts as the instants do."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Answered:
    """The HTTP side of an answer given before the request is sent, as botocore reads it."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}


class MotoShortcut:
    """Answers the naive recorder's PutItem and Query calls from embedded moto's backend at botocore's
    `before-call`, once the request is built and before it would be sent. moto's HTTP layer costs several
    times the write itself, and its Query sorts the whole table on every call, which makes a close of
    thousands of account-periods take hours. Puts still go through moto's own `put_item` (its conditions,
    its storage); a Query is answered from its partition. Everything else goes to moto as usual, and the
    capacity meter sees every call, answer included, as it would otherwise."""

    def __init__(self, account_id: str = MOTO_ACCOUNT, region: str = REGION) -> None:
        from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - moto is a development dependency

        self._backend = dynamodb_backends[account_id][region]
        self._tables = MotoTables(account_id, region)

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.dynamodb", self._remember)
        client.meta.events.register("before-call.dynamodb", self._answer)

    @staticmethod
    def _remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["naive-params"] = params

    def _answer(
        self, model: Any, context: dict[str, Any], **_: Any
    ) -> tuple[_Answered, dict[str, Any]] | None:
        params: dict[str, Any] = context.pop("naive-params", {})
        if model.name == "PutItem":
            return self._put(params)
        if model.name == "Query" and not params.get("IndexName"):
            return self._query(params)
        return None

    def _put(self, params: dict[str, Any]) -> tuple[_Answered, dict[str, Any]]:
        from moto.dynamodb.exceptions import ConditionalCheckFailed  # noqa: PLC0415

        condition = params.get("ConditionExpression")
        try:
            self._backend.put_item(
                params["TableName"],
                params["Item"],
                condition_expression=condition,
                expression_attribute_names=params.get("ExpressionAttributeNames"),
                expression_attribute_values=params.get("ExpressionAttributeValues"),
                overwrite=condition is None,
            )
        except ConditionalCheckFailed:
            error = {"Code": "ConditionalCheckFailedException", "Message": "The conditional request failed"}
            return _Answered(400), {"Error": error}
        return _Answered(200), {}

    def _query(self, params: dict[str, Any]) -> tuple[_Answered, dict[str, Any]]:
        table = params["TableName"]
        schema = self._tables.schema(table)
        condition = KeyCondition.parse(params, schema.hash_key)
        items = sorted(
            (
                item
                for item in self._tables.partition(table, condition.partition_value)
                if condition.accepts(item)
            ),
            key=schema.key_of,
        )
        answer: dict[str, Any] = {"Count": len(items), "ScannedCount": len(items)}
        if params.get("Select") != "COUNT":
            answer["Items"] = items
        return _Answered(200), answer


@dataclass(frozen=True, slots=True)
class NaiveRun:
    """What the naive recorder did with a file of envelopes, and what it cost."""

    events: int
    invocations: int
    activations: int
    invoices: int
    capacity: dict[str, Any]


@contextlib.contextmanager
def embedded_moto() -> Iterator[None]:
    """Fake credentials and moto's in-process AWS, restored afterwards."""
    from moto import mock_aws  # noqa: PLC0415 - moto is a development dependency

    saved = {name: os.environ.get(name) for name in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    try:
        with mock_aws():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def replay_naive(
    events_path: Path, *, classify: Classifier = classify_today, default_timezone: str = "UTC"
) -> NaiveRun:
    """Record every envelope of `events_path` (claim-check objects from `<events>.objects/`) with the naive
    recorder on a fresh table built from template.yaml on embedded moto, close every period, and return
    what the capacity meter charged."""
    with embedded_moto():
        table_name = f"metering-naive-{uuid.uuid4().hex[:8]}"
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(**table_definition(load_template(), table_name))
        meter = CapacityMeter(classify)
        meter.attach(client)
        MotoShortcut().attach(client)
        recorder = NaiveRecorder(table_name, client, events_path.with_suffix(".objects"), default_timezone)
        events = 0
        with events_path.open(encoding="utf-8") as stream:
            for line in stream:
                if line.strip():
                    events += 1
                    recorder.record(line)
        recorder.close()
        return NaiveRun(events, recorder.invocations, recorder.activations, recorder.invoices, meter.stats())
