"""CountContacts: the table's stream of new contacts -> the exact counter of each large period."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.counting import count_contacts
from metering.observability import (
    dynamodb_request_metrics,
    emit_count_metrics,
    logger,
    metrics,
    surfaced_faults,
)
from metering.retrying import RetryBudget
from metering.settings import CounterSettings
from metering.store import MeteringStore
from metering.stream_intake import StreamBatch, stream_response

SETTINGS = CounterSettings.from_env()
STORE = MeteringStore(SETTINGS.table_name)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    batch = StreamBatch.parse(event)
    records = batch.new_contacts()
    budget = RetryBudget.for_invocation(context.get_remaining_time_in_millis() / 1000)
    with dynamodb_request_metrics(), surfaced_faults():
        outcome = count_contacts(records, batch.shard_id, STORE, budget)
    emit_count_metrics(outcome, records)
    return stream_response(outcome.first_failed_sequence)
