"""InvoiceAccount: close one account's sealed period per close request: count it, invoice once, publish."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.billing import bill_batch
from metering.message_parsing import InboundRecord
from metering.observability import (
    batch_item_failures,
    dynamodb_request_metrics,
    emit_billing_metrics,
    logger,
    metrics,
    surfaced_faults,
)
from metering.settings import InvoiceSettings
from metering.store import MeteringStore

SETTINGS = InvoiceSettings.from_env()
STORE = MeteringStore(SETTINGS.table_name)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    messages = [InboundRecord.of_sqs(record) for record in event["Records"]]
    with dynamodb_request_metrics(), surfaced_faults():
        batch = bill_batch(messages, STORE, SETTINGS)
    emit_billing_metrics(batch)
    return batch_item_failures(batch.retried_message_ids)
