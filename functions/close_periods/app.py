"""ClosePeriods: hourly, queue a close request for every period whose end plus grace has passed."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.closing import ScheduledRun, schedule_due_closes
from metering.observability import MetricUnit, dynamodb_request_metrics, logger, metrics
from metering.settings import CloseSettings
from metering.store import DynamoStore

SETTINGS = CloseSettings.from_env()
STORE = DynamoStore(SETTINGS.table_name)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = ScheduledRun.model_validate(event)
    with dynamodb_request_metrics():
        requests = schedule_due_closes(run, STORE, SETTINGS)
    metrics.add_metric(name="ClosesScheduled", unit=MetricUnit.Count, value=len(requests))
    metrics.add_metric(name="CloseRunsCompleted", unit=MetricUnit.Count, value=1)
    logger.info("close run", extra={"asOf": run.scheduled_time.isoformat(), "periods": len(requests)})
    return {"scheduledTime": run.scheduled_time.isoformat(), "periodsQueued": len(requests)}
