"""RecordActivity: SQS batches of CRM events (from the bus or the fan-out queue) -> active contacts."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.message_parsing import InboundRecord
from metering.observability import (
    batch_item_failures,
    dynamodb_request_metrics,
    emit_recording_metrics,
    logger,
    metrics,
    surfaced_faults,
)
from metering.recording import Recorder
from metering.retrying import RetryBudget
from metering.settings import RecorderSettings
from metering.store import MeteringStore

SETTINGS = RecorderSettings.from_env()
RECORDER = Recorder(
    SETTINGS, MeteringStore(SETTINGS.table_name, write_concurrency=SETTINGS.write_concurrency)
)
FAN_OUT_QUEUE_NAME = SETTINGS.fanout_queue_url.rstrip("/").rsplit("/", 1)[-1]


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = [InboundRecord.of_sqs(record, FAN_OUT_QUEUE_NAME) for record in event["Records"]]
    budget = RetryBudget.for_invocation(context.get_remaining_time_in_millis() / 1000)
    with dynamodb_request_metrics(), surfaced_faults():
        outcome = RECORDER.record(records, budget)
    emit_recording_metrics(outcome)
    retried = outcome.retried_message_ids
    return batch_item_failures(r.message_id for r in records if r.message_id in retried)
