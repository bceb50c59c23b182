"""RecordActivity: SQS batches of CRM events (from the bus or the fan-out queue) -> active contacts."""

from functools import partial
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.observability import (
    dynamodb_request_metrics,
    emit_recording_metrics,
    fail_unfinished,
    logger,
    metrics,
)
from metering.recording import InboundRecord, Recorder
from metering.settings import RecorderSettings
from metering.store import DynamoStore

SETTINGS = RecorderSettings.from_env()
RECORDER = Recorder(SETTINGS, DynamoStore(SETTINGS.table_name, write_concurrency=SETTINGS.write_concurrency))
PROCESSOR = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with dynamodb_request_metrics():
        outcome = RECORDER.record([InboundRecord(r["messageId"], r["body"]) for r in event["Records"]])
    emit_recording_metrics(outcome)
    unfinished = partial(fail_unfinished, outcome.failed_message_ids)
    return dict(
        process_partial_response(event, record_handler=unfinished, processor=PROCESSOR, context=context)
    )
