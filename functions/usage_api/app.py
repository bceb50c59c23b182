"""UsageApi: the function behind the HTTP API; answers one request through the Usage API's routes, or serves
the usage page the CRM embeds (its routes carry no authorizer: the page holds no data)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from metering.observability import logger, metrics
from metering.settings import ApiSettings
from metering.store import MeteringStore
from metering.usage_api import UsageApi
from metering.usage_page import UsagePage

SETTINGS = ApiSettings.from_env()
API = UsageApi(MeteringStore(SETTINGS.table_name), SETTINGS)
PAGE = UsagePage(SETTINGS.account_claim, SETTINGS.page_frame_ancestors)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if PAGE.serves(event):
        return PAGE.answer(event)
    return API.handle(event, context)
