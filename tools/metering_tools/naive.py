"""SPEC §6's naive recorder, measured beside the real functions on the same events as the cost baseline.

The naive design is "one invocation and one conditional PutItem per event": every activity event puts the
contact item of each contact it names under `attribute_not_exists` (a `Status Renamed` one per contact of
its column, a failed condition charged like any write), every `Subscription Changed` puts its change, and
nothing is read, batched or cached. The close then counts each account-period's contact items (a consistent
`Select=COUNT` Query), reads the account's subscription history, and puts one invoice where there is
overusage. It writes through the production store (`metering.store`), so its items, keys and sizes are those
of the real design and the capacity meter names its paths the same way.

Time zones and the set of account-periods are kept in memory: the naive design pays for no read to learn
them, and publishes nothing, which only makes it cheaper than it could be.
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
from typing import Any

import boto3
from metering.events import CRM_EVENT, StatusRenamed, SubscriptionChanged
from metering.model import Activation, Invoice, PeriodRef
from metering.placement import subscription_of
from metering.retrying import RetryBudget
from metering.rules import History, Subscription, invoice_lines, utc_iso
from metering.store import MeteringStore
from pydantic import ValidationError

from metering_tools.capacity import CapacityMeter, Classifier, moto_partition_queries
from metering_tools.provisioning import load_template, table_definition

REGION = "eu-central-1"
CLOSED_AT = datetime(2026, 11, 2, tzinfo=UTC)
"""When the naive close runs and issues its invoices (the regimes' final close)."""
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass(slots=True)
class NaiveRecorder:
    """One invocation per event, one conditional PutItem per contact it names."""

    store: MeteringStore
    objects_dir: Path | None = None
    default_timezone: str = "UTC"
    invocations: int = 0
    activations: int = 0
    invoices: int = 0
    invalid: int = 0
    _histories: dict[str, list[Subscription]] = field(default_factory=dict)
    _periods: set[PeriodRef] = field(default_factory=set)

    def record(self, body: str) -> None:
        """One Lambda invocation for one envelope (the naive design has no batches). An invalid envelope is
        skipped: the naive design's rejections are not what is compared."""
        self.invocations += 1
        try:
            event = CRM_EVENT.validate_json(body)
        except (ValidationError, ValueError):
            self.invalid += 1
            return
        if isinstance(event, SubscriptionChanged):
            change = subscription_of(event)
            self.store.subscriptions.save([change], RetryBudget.single_try())
            self._histories.setdefault(change.account_id, []).append(change)
            return
        history = History.of(self._histories.get(event.account_id, []), self.default_timezone)
        ref = PeriodRef(event.account_id, history.place(event.occurred_at))
        self._periods.add(ref)
        activated = self.store.contacts.activate(
            [
                Activation(ref, contact_id, event.id, event.detail_type, event.occurred_at)
                for contact_id in self._contacts_of(event)
            ]
        )
        self.activations += len(activated.inserted)

    def close(self, issued_at: str) -> None:
        """Per account-period: count its contacts, read the account's subscriptions, and put an invoice when
        the count exceeds the allowance of a billed plan."""
        for ref in sorted(self._periods, key=lambda ref: (ref.account_id, ref.period)):
            active = self.store.contacts.count(ref, consistent=True)
            history = History.of(self.store.subscriptions.history(ref.account_id), self.default_timezone)
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
        if event.detail.contact_ids is not None:
            return tuple(event.detail.contact_ids)
        claim = event.detail.contact_ids_object
        if claim is None or self.objects_dir is None:
            return ()
        path = self.objects_dir / claim.key
        return tuple(path.read_text(encoding="utf-8").split()) if path.is_file() else ()


class _Answered:
    """The HTTP side of an answer given before the request is sent, as botocore reads it."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}


class PutShortcut:
    """Answers the naive recorder's PutItem calls from embedded moto's backend at botocore's `before-call`,
    once the request is built and before it would be sent: moto's HTTP layer costs several times the write
    itself, and the naive design makes one per event. The put is still moto's own (`put_item`, with its
    condition and `ReturnValuesOnConditionCheckFailure`); the capacity meter sees the call and its answer as
    it would otherwise. Every other call goes to moto as usual."""

    def __init__(self, region: str = REGION) -> None:
        from moto.core.models import DEFAULT_ACCOUNT_ID  # noqa: PLC0415 - moto is a development dependency
        from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415

        self._backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][region]

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.dynamodb.PutItem", self._remember)
        client.meta.events.register("before-call.dynamodb.PutItem", self._answer)

    @staticmethod
    def _remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["naive-put"] = params

    def _answer(self, context: dict[str, Any], **_: Any) -> tuple[_Answered, dict[str, Any]]:
        from moto.dynamodb.exceptions import ConditionalCheckFailed  # noqa: PLC0415

        params: dict[str, Any] = context.pop("naive-put")
        condition = params.get("ConditionExpression")
        try:
            self._backend.put_item(
                params["TableName"],
                params["Item"],
                condition_expression=condition,
                expression_attribute_names=params.get("ExpressionAttributeNames"),
                expression_attribute_values=params.get("ExpressionAttributeValues"),
                overwrite=condition is None,
                return_values_on_condition_check_failure=params.get("ReturnValuesOnConditionCheckFailure"),
            )
        except ConditionalCheckFailed as exc:
            failure: dict[str, Any] = json.loads(exc.description)
            error = {"Code": "ConditionalCheckFailedException", "Message": "The conditional request failed"}
            return _Answered(400), {
                "Error": error,
                **({"Item": failure["Item"]} if "Item" in failure else {}),
            }
        return _Answered(200), {}


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
    """Fake credentials and moto's in-process AWS (its Query answered from the queried partition), restored
    afterwards."""
    from moto import mock_aws  # noqa: PLC0415 - moto is a development dependency

    saved = {name: os.environ.get(name) for name in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    try:
        with mock_aws(), moto_partition_queries():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def replay_naive(
    events_path: Path,
    *,
    classify: Classifier | None = None,
    default_timezone: str = "UTC",
    issued_at: datetime = CLOSED_AT,
) -> NaiveRun:
    """Record every envelope of `events_path` (claim-check objects from `<events>.objects/`) with the naive
    recorder on a fresh table built from template.yaml on embedded moto, close every period, and return
    what the capacity meter charged."""
    with embedded_moto():
        table_name = f"metering-naive-{uuid.uuid4().hex[:8]}"
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(**table_definition(load_template(), table_name))
        meter = CapacityMeter(classify) if classify is not None else CapacityMeter()
        meter.attach(client)
        PutShortcut().attach(client)
        recorder = NaiveRecorder(
            MeteringStore(table_name, client, write_concurrency=1),
            events_path.with_suffix(".objects"),
            default_timezone,
        )
        events = 0
        with events_path.open(encoding="utf-8") as stream:
            for line in stream:
                if line.strip():
                    events += 1
                    recorder.record(line)
        recorder.close(utc_iso(issued_at))
        return NaiveRun(events, recorder.invocations, recorder.activations, recorder.invoices, meter.stats())
