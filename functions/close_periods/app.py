"""ClosePeriods: hourly, seal every period whose close instant has passed and hand each billed account to
InvoiceAccount; a run that nears its deadline saves its place and invokes itself to go on."""

import json
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering import gateways
from metering.observability import (
    dynamodb_request_metrics,
    emit_sealing_metrics,
    logger,
    metrics,
    surfaced_faults,
)
from metering.sealing import ScheduledRun, seal_and_hand_over
from metering.settings import CloseSettings
from metering.store import MeteringStore

SETTINGS = CloseSettings.from_env()
STORE = MeteringStore(SETTINGS.table_name)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = ScheduledRun.model_validate(event)
    with dynamodb_request_metrics(), surfaced_faults():
        result = seal_and_hand_over(
            run, STORE, SETTINGS, lambda: context.get_remaining_time_in_millis() / 1000
        )
        if result.handed_over:
            gateways.invoke_async(context.invoked_function_arn, json.dumps(event))
    emit_sealing_metrics(run, result)
    return result.response(run)
