"""SPEC §6's naive recorder, the cost baseline measured beside the real functions on the same events.

"One invocation and one conditional PutItem per event": each activity event puts the contact item of each
contact it names under `attribute_not_exists` (a `Status Renamed` one per contact of its column; a failed
condition is charged like any write), each `Subscription Changed` its change; nothing is read, batched or
cached. The close counts each account-period's contact items (a consistent `Select=COUNT` Query), reads the
account's subscriptions and puts an invoice where there is overusage. It writes through `metering.store`,
so items, keys, sizes and capacity paths are the real design's. Time zones and account-periods are kept in
memory and nothing is published: that only makes it cheaper than it could be."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from metering.events import CRM_EVENT, StatusRenamed, SubscriptionChanged
from metering.model import Activation, Invoice, PeriodRef
from metering.placement import subscription_of
from metering.retrying import RetryBudget
from metering.rules import History, Subscription, invoice_lines, utc_iso
from metering.store import MeteringStore
from metering_tools.capacity import MOTO_ACCOUNT, CapacityMeter
from metering_tools.embedded_moto import embedded_aws
from metering_tools.local_stack import table_definition
from metering_tools.template import load_template

REGION = "eu-central-1"
CLOSED_AT = datetime(2026, 11, 2, tzinfo=UTC)
"""When the naive close runs and issues its invoices (the regimes' final close)."""


@dataclass(slots=True)
class NaiveRecorder:
    store: MeteringStore
    objects_dir: Path
    invocations: int = 0
    activations: int = 0
    invoices: int = 0
    _histories: dict[str, list[Subscription]] = field(default_factory=dict)
    _periods: set[PeriodRef] = field(default_factory=set)

    def record(self, body: str) -> None:
        self.invocations += 1
        try:
            event = CRM_EVENT.validate_json(body)
        except ValueError:  # pydantic's ValidationError is one
            return  # an invalid envelope is skipped: rejections aren't compared
        if isinstance(event, SubscriptionChanged):
            change = subscription_of(event)
            self.store.subscriptions.save([change], RetryBudget.single_try())
            self._histories.setdefault(change.account_id, []).append(change)
            return
        history = History.of(self._histories.get(event.account_id, []), "UTC")
        ref = PeriodRef(event.account_id, history.place(event.occurred_at))
        self._periods.add(ref)
        activations = [
            Activation(ref, contact_id, event.id, event.detail_type, event.occurred_at)
            for contact_id in self._contacts_of(event)
        ]
        self.activations += len(self.store.contacts.activate(activations).inserted)

    def close(self, issued_at: str) -> None:
        for ref in sorted(self._periods):
            active = self.store.contacts.count(ref, consistent=True)
            history = History.of(self.store.subscriptions.history(ref.account_id), "UTC")
            subscription = history.billing_subscription(ref.period)
            if subscription is None or not subscription.billed:
                continue
            lines = invoice_lines(subscription, active)
            if lines.overusage_contacts:
                self.store.invoices.save(Invoice(ref, lines, issued_at=issued_at))
                self.invoices += 1

    def _contacts_of(self, event: Any) -> tuple[str, ...]:
        if not isinstance(event, StatusRenamed):
            return (str(event.detail.contact_id),)
        claim = event.detail.contact_ids_object  # or its contact ids, never both
        if claim is None:
            return event.detail.contact_ids or ()
        path = self.objects_dir / claim.key
        return tuple(path.read_text(encoding="utf-8").split()) if path.is_file() else ()


def shortcut_puts(client: Any) -> None:
    """Answers the client's PutItem calls from embedded moto's backend at botocore's `before-call`, before
    the built request is sent: moto's HTTP layer costs several times the write itself, and the naive design
    makes one per event. The put is still moto's own (`put_item` of the request as its HTTP layer reads it,
    condition and `ReturnValuesOnConditionCheckFailure` included), the capacity meter sees it as usual."""
    from moto.dynamodb.exceptions import ConditionalCheckFailed  # noqa: PLC0415
    from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - moto is a development dependency

    backend = dynamodb_backends[MOTO_ACCOUNT][REGION]

    def answer(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        put: dict[str, Any] = json.loads(params["body"])
        condition = put.get("ConditionExpression")
        try:
            backend.put_item(
                put["TableName"],
                put["Item"],
                condition_expression=condition,
                expression_attribute_names=put.get("ExpressionAttributeNames"),
                expression_attribute_values=put.get("ExpressionAttributeValues"),
                overwrite=condition is None,
                return_values_on_condition_check_failure=put.get("ReturnValuesOnConditionCheckFailure"),
            )
        except ConditionalCheckFailed as exc:
            failure: dict[str, Any] = json.loads(exc.description)
            error = {"Code": "ConditionalCheckFailedException", "Message": "The conditional request failed"}
            old_item = {"Item": failure["Item"]} if "Item" in failure else {}
            return AWSResponse("", 400, HTTPHeaders(), None), {"Error": error, **old_item}
        return AWSResponse("", 200, HTTPHeaders(), None), {}

    client.meta.events.register("before-call.dynamodb.PutItem", answer)


@dataclass(frozen=True, slots=True)
class NaiveRun:
    events: int
    invocations: int
    activations: int
    invoices: int
    capacity: dict[str, Any]


def replay_naive(events_path: Path) -> NaiveRun:
    """Record every envelope of `events_path` (claim-check objects from `<events>.objects/`) on a fresh table
    of template.yaml on embedded moto, close every period, and return what the capacity meter charged."""
    with embedded_aws(REGION):
        table_name = f"metering-naive-{uuid.uuid4().hex[:8]}"
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(**table_definition(load_template(), table_name))
        meter = CapacityMeter()
        meter.attach(client)
        shortcut_puts(client)
        store = MeteringStore(table_name, client, write_concurrency=1)
        naive = NaiveRecorder(store, events_path.with_suffix(".objects"))
        with events_path.open(encoding="utf-8") as stream:
            for line in filter(str.strip, stream):
                naive.record(line)  # one invocation per event
        naive.close(utc_iso(CLOSED_AT))
    return NaiveRun(naive.invocations, naive.invocations, naive.activations, naive.invoices, meter.stats())
