"""UsageApi: the function behind the HTTP API; answers one request through the Usage API's routes."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.observability import logger, metrics
from metering.settings import ApiSettings
from metering.store import MeteringStore
from metering.usage_api import UsageApi

SETTINGS = ApiSettings.from_env()
API = UsageApi(MeteringStore(SETTINGS.table_name), SETTINGS)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return API.handle(event, context)
