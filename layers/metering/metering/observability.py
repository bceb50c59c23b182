"""Logger and metrics singletons shared by every function, and the metrics each outcome emits.

Metrics carry no per-account dimension (each dimension value is a billed custom metric); per-account
detail goes to structured logs and the table."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from metering.aws import DYNAMODB_REQUESTS
from metering.errors import ServiceMisconfigured

if TYPE_CHECKING:
    from metering.billing import BillingBatch, BillingResult
    from metering.counting import CountOutcome, StreamedContact
    from metering.recording_outcome import RecordingOutcome
    from metering.sealing import ScheduledRun, SealingRun

logger = Logger()
metrics = Metrics()


def batch_item_failures(message_ids: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    """The partial-batch response of an SQS event source mapping (ReportBatchItemFailures)."""
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in message_ids]}


@contextmanager
def surfaced_faults() -> Iterator[None]:
    """A deployment or programming fault (access denied, a missing resource, an invalid request) is logged
    with the call it broke, counted as `ConfigurationErrors`, and fails the invocation: the function's Errors
    alarm fires on the first one and the records return to their queue, then its DLQ."""
    try:
        yield
    except ServiceMisconfigured as fault:
        metrics.add_metric(name="ConfigurationErrors", unit=MetricUnit.Count, value=1)
        logger.error(
            "service refused a call: configuration or code fault",
            extra={
                "service": fault.service,
                "operation": fault.operation,
                "resource": fault.resource,
                "code": fault.code,
                "error": str(fault),
            },
        )
        raise


@contextmanager
def dynamodb_request_metrics() -> Iterator[None]:
    """Emit the DynamoDB calls and items an invocation made, by operation (`DynamoDBCalls_PutItem`, ...)."""
    calls_before, items_before = DYNAMODB_REQUESTS.snapshot()
    try:
        yield
    finally:
        calls, items = DYNAMODB_REQUESTS.snapshot()
        for operation, count in (calls - calls_before).items():
            metrics.add_metric(name=f"DynamoDBCalls_{operation}", unit=MetricUnit.Count, value=count)
            metrics.add_metric(
                name=f"DynamoDBItems_{operation}",
                unit=MetricUnit.Count,
                value=items[operation] - items_before[operation],
            )


def _metric_name(detail_type: str) -> str:
    return "Events_" + detail_type.replace(" ", "")


def emit_recording_metrics(outcome: RecordingOutcome) -> None:
    for detail_type, count in outcome.events_by_type.items():
        metrics.add_metric(name=_metric_name(detail_type), unit=MetricUnit.Count, value=count)
    counts = {
        "EventsProcessed": sum(outcome.events_by_type.values()),
        "Activations": outcome.activations,
        "DuplicateTouches": outcome.duplicate_touches,
        "RejectedEvents": len(outcome.rejected),
        "LateEvents": len(outcome.late),
        "UsageAlerts": len(outcome.alerts),
        "AllowanceReached": sum(1 for alert in outcome.alerts if alert.threshold_percent == 100),
        "FanOutContacts": outcome.fanned_out_contacts,
        "RecordsRetried": len(outcome.retried_message_ids),
        "RecordsAcknowledgedEarly": len(outcome.acknowledged_message_ids),
    }
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for retry in outcome.retry_reasons:
        logger.warning(
            "records retried",
            extra={
                "accountId": retry.account_id,
                "period": retry.period,
                "records": retry.records,
                "reason": retry.reason,
            },
        )
    for rejection in outcome.rejected:
        logger.warning("event rejected", extra={"eventId": rejection.event_id, "reason": rejection.reason})
    for late in outcome.late:
        logger.warning(
            "late event",
            extra={"eventId": late.event_id, "accountId": late.ref.account_id, "period": late.ref.period},
        )


def emit_billing_metrics(batch: BillingBatch) -> None:
    for message_id, error in batch.unreadable.items():
        logger.error("close request unreadable", extra={"messageId": message_id, "error": error})
    for retried in batch.retried:
        if retried.publish_failed:
            metrics.add_metric(name="InvoicePublishFailures", unit=MetricUnit.Count, value=1)
        logger.warning(
            "close retried",
            extra={
                "accountId": retried.request.account_id,
                "period": retried.request.period,
                "reason": retried.reason,
            },
        )
    for result in batch.results:
        _emit_billing_result_metrics(result)


def _emit_billing_result_metrics(result: BillingResult) -> None:
    metrics.add_metric(name=f"PeriodsClosed_{result.outcome.value}", unit=MetricUnit.Count, value=1)
    if result.invoice is not None:
        metrics.add_metric(name="InvoicesIssued", unit=MetricUnit.Count, value=1)
        metrics.add_metric(
            name="OverusageAmountCents", unit=MetricUnit.Count, value=result.invoice.lines.amount_cents
        )
    logger.info(
        "period closed",
        extra={
            "accountId": result.ref.account_id,
            "period": result.ref.period,
            "outcome": result.outcome.value,
            "activeContacts": result.active_contacts,
            "amountCents": result.invoice.lines.amount_cents if result.invoice else 0,
        },
    )


def emit_sealing_metrics(run: ScheduledRun, result: SealingRun) -> None:
    metrics.add_metric(name="ClosesScheduled", unit=MetricUnit.Count, value=result.requests_sent)
    metrics.add_metric(name="CloseRunsCompleted", unit=MetricUnit.Count, value=0 if result.handed_over else 1)
    logger.info(
        "close run",
        extra={
            "asOf": run.scheduled_time.isoformat(),
            "sealed": result.sealed,
            "requests": result.requests_sent,
            "handedOver": result.handed_over,
        },
    )


__all__ = [
    "MetricUnit",
    "batch_item_failures",
    "emit_billing_metrics",
    "emit_recording_metrics",
    "emit_sealing_metrics",
    "logger",
    "metrics",
    "surfaced_faults",
]


def emit_count_metrics(outcome: CountOutcome, records: Sequence[StreamedContact]) -> None:
    """What a stream batch did to the counters, and how far behind the newest contact it saw was recorded:
    `CounterLagSeconds` is what a usage view's `asOf` trails by at most."""
    metrics.add_metric(name="ContactsStreamed", unit=MetricUnit.Count, value=len(records))
    metrics.add_metric(name="ContactsCounted", unit=MetricUnit.Count, value=sum(outcome.added.values()))
    metrics.add_metric(name="CountersStarted", unit=MetricUnit.Count, value=len(outcome.bootstrapped))
    metrics.add_metric(name="ContactsReturnedToStream", unit=MetricUnit.Count, value=len(outcome.failed))
    if records:
        lag = (datetime.now(UTC) - max(record.created_at for record in records)).total_seconds()
        metrics.add_metric(name="CounterLagSeconds", unit=MetricUnit.Seconds, value=max(lag, 0.0))
    if outcome.failed:
        logger.warning(
            "periods returned to the stream",
            extra={"periods": len({record.ref for record in outcome.failed})},
        )
