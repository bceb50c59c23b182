"""InvoiceAccount: close one account's period per close request: seal, invoice once, publish."""

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.closing import CloseRequest, InvoicePublishFailed, close_period
from metering.observability import MetricUnit, emit_close_metrics, logger, metrics
from metering.settings import InvoiceSettings
from metering.store import DynamoStore

SETTINGS = InvoiceSettings.from_env()
STORE = DynamoStore(SETTINGS.table_name)
PROCESSOR = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def close_one(record: SQSRecord) -> None:
    request = CloseRequest.model_validate_json(record.body)
    try:
        result = close_period(request, STORE, SETTINGS)
    except Exception as exc:
        if isinstance(exc, InvoicePublishFailed):
            metrics.add_metric(name="InvoicePublishFailures", unit=MetricUnit.Count, value=1)
        logger.exception("close failed", extra={"accountId": request.account_id, "period": request.period})
        raise
    emit_close_metrics(result)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(
        process_partial_response(event, record_handler=close_one, processor=PROCESSOR, context=context)
    )
