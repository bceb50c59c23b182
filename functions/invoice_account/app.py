"""InvoiceAccount: close one account's sealed period per close request: count it, invoice once, publish."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.closing import CloseRequest, CloseStatesRead, InvoicePublishFailed, close_account
from metering.model import StoreUnavailable
from metering.observability import (
    MetricUnit,
    batch_item_failures,
    dynamodb_request_metrics,
    emit_close_metrics,
    logger,
    metrics,
    surfaced_faults,
)
from metering.settings import InvoiceSettings
from metering.store import MeteringStore
from pydantic import ValidationError

SETTINGS = InvoiceSettings.from_env()
STORE = MeteringStore(SETTINGS.table_name)


def close_one(record: dict[str, Any], states: CloseStatesRead) -> bool:
    """Close the record's period; False when it must be retried (a transient failure, logged) or cannot be
    read (it goes on to the close DLQ)."""
    try:
        request = CloseRequest.model_validate_json(record["body"])
    except ValidationError as exc:
        logger.error("close request unreadable", extra={"messageId": record["messageId"], "error": str(exc)})
        return False
    try:
        result = close_account(request, STORE, SETTINGS, states)
    except StoreUnavailable as exc:
        if isinstance(exc, InvoicePublishFailed):
            metrics.add_metric(name="InvoicePublishFailures", unit=MetricUnit.Count, value=1)
        logger.warning(
            "close retried",
            extra={"accountId": request.account_id, "period": request.period, "reason": str(exc)},
        )
        return False
    emit_close_metrics(result)
    return True


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with dynamodb_request_metrics(), surfaced_faults():
        states = CloseStatesRead(STORE)
        failed = [record["messageId"] for record in event["Records"] if not close_one(record, states)]
    return batch_item_failures(failed)
