"""The Usage API in `template.yaml`: a JWT authorizer on every route but the usage page's, the routes the
function serves, a read-only role that alone may read the cursor key, access logs without tokens or headers,
and its alarms with runbook sections."""

from __future__ import annotations

import json
import re
from typing import Any

from metering.usage_api import ENDPOINTS
from metering_tools.template import NO_VALUE, Resolver, load_template, parameter_values, references, target

from tests.helpers import REPO_ROOT

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
API = RESOURCES["UsageHttpApi"]["Properties"]
FUNCTION = RESOURCES["UsageApiFunction"]["Properties"]
PAGE_PATHS = {"/usage-page", "/usage-page/{asset}"}
READ_ACTIONS = {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"}


def statements(role: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in RESOURCES[role]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if isinstance(statement, dict) and "Effect" in statement
    ]


def cors_configuration(origins: str) -> Any:
    """The API's CORS configuration deployed with these `ApiCorsOrigins` (NO_VALUE: none)."""
    resolver = Resolver(TEMPLATE, {"ApiCorsOrigins": origins}, pseudo={"AWS::NoValue": NO_VALUE})
    return resolver.resolve(API["CorsConfiguration"], "UsageHttpApi.Properties.CorsConfiguration")


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_every_route_is_behind_the_jwt_authorizer_with_issuer_audience_and_scopes_from_parameters() -> None:
    auth = API["Auth"]
    [(name, authorizer)] = auth["Authorizers"].items()
    assert auth["DefaultAuthorizer"] == name
    assert authorizer["JwtConfiguration"] == {
        "issuer": {"Ref": "ApiIssuer"},
        "audience": [{"Ref": "ApiAudience"}],
    }
    assert authorizer["IdentitySource"] == "$request.header.Authorization"
    assert set(authorizer["AuthorizationScopes"]) == {"metering/usage.read", "metering/usage.read.all"}
    # no route of the API opts out of it; only the usage page's two routes do (the page holds no data)
    opted_out = {
        (event["Properties"]["Path"], json.dumps(event["Properties"]["Auth"], sort_keys=True))
        for event in FUNCTION["Events"].values()
        if "Auth" in event["Properties"]
    }
    assert opted_out == {(path, '{"Authorizer": "NONE"}') for path in PAGE_PATHS}


def test_the_routes_are_the_ones_the_function_serves_plus_the_default_route_for_its_404_and_405() -> None:
    routes = {
        (event["Properties"].get("Method"), event["Properties"].get("Path"))
        for event in FUNCTION["Events"].values()
        if event["Type"] == "HttpApi" and target(event["Properties"]["ApiId"]) == ("UsageHttpApi", None)
    }
    page_routes = {("GET", path) for path in PAGE_PATHS}
    assert routes == {("GET", endpoint.template) for endpoint in ENDPOINTS} | page_routes | {(None, None)}


def test_the_usage_page_may_be_framed_only_by_the_origins_of_a_parameter_none_by_default() -> None:
    parameter = TEMPLATE["Parameters"]["UsagePageFrameAncestors"]
    assert parameter_values(TEMPLATE)["UsagePageFrameAncestors"] == ""
    assert FUNCTION["Environment"]["Variables"]["PAGE_FRAME_ANCESTORS"] == {"Ref": "UsagePageFrameAncestors"}
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("https://app.example-crm.com,https://*.example-crm.com:8443")
    for bad in ("https://a.example; script-src *", "*", "http://crm.example", "https://a.example b.example"):
        assert not pattern.fullmatch(bad), bad


def test_the_stage_is_throttled_and_cors_allowed_only_for_the_configured_origins() -> None:
    assert API["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "ApiThrottleBurst"},
        "ThrottlingRateLimit": {"Ref": "ApiThrottleRate"},
    }
    # none by default; the configured origins, for GET only, when ApiCorsOrigins is set
    assert cors_configuration(parameter_values(TEMPLATE)["ApiCorsOrigins"]) is NO_VALUE
    cors = cors_configuration("https://app.example-crm.com")
    assert (cors["AllowOrigins"], cors["AllowMethods"]) == ("https://app.example-crm.com", ["GET"])


def test_access_logs_carry_no_token_header_claim_or_query_value() -> None:
    settings = API["AccessLogSettings"]
    assert target(settings["DestinationArn"]) == ("UsageApiAccessLogGroup", "Arn")
    variables = set(re.findall(r"\$context\.[A-Za-z.]+", settings["Format"]))
    assert variables
    assert not any(
        re.search(r"identity|header|claims|authorizer\.(?!error)|path|query", v) for v in variables
    )
    assert json.loads(re.sub(r"\$context\.[A-Za-z.]+", "0", settings["Format"]))
    group = RESOURCES["UsageApiAccessLogGroup"]["Properties"]
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_function_reads_the_table_and_its_cursor_key_only() -> None:
    by_sid = {statement["Sid"]: statement for statement in statements("UsageApiRole")}
    assert set(by_sid) == {"Logs", "ReadTable", "CursorKey"}
    assert set(actions(by_sid["ReadTable"])) <= READ_ACTIONS
    assert target(by_sid["ReadTable"]["Resource"]) == ("MeteringTable", "Arn")
    assert actions(by_sid["CursorKey"]) == ["secretsmanager:GetSecretValue"]
    assert by_sid["CursorKey"]["Resource"] == {"Ref": "UsageApiCursorSecret"}
    assert FUNCTION["Environment"]["Variables"]["CURSOR_SECRET_ARN"] == {"Ref": "UsageApiCursorSecret"}


def test_no_other_role_may_read_the_cursor_key() -> None:
    # what the skipped checkov check CKV_AWS_149 relies on (.checkov.yaml)
    readers = [
        name
        for name, resource in RESOURCES.items()
        if resource["Type"] == "AWS::IAM::Role"
        for statement in statements(name)
        if "UsageApiCursorSecret" in references(statement.get("Resource"))
        or any(action.startswith("secretsmanager:") for action in actions(statement))
    ]
    assert readers == ["UsageApiRole"]
    generated = RESOURCES["UsageApiCursorSecret"]["Properties"]["GenerateSecretString"]
    assert generated["PasswordLength"] >= 32


def test_the_api_has_its_5xx_latency_and_throttling_alarms_each_with_a_runbook_section() -> None:
    runbook = (REPO_ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    alarms = {
        name: resource["Properties"]
        for name, resource in RESOURCES.items()
        if resource["Type"] == "AWS::CloudWatch::Alarm" and name.startswith("UsageApi")
    }
    assert set(alarms) == {
        "UsageApiErrorsAlarm",
        "UsageApiThrottlesAlarm",
        "UsageApiServerErrorsAlarm",
        "UsageApiLatencyAlarm",
        "UsageApiThrottledAlarm",
    }
    assert alarms["UsageApiServerErrorsAlarm"]["MetricName"] == "5xx"
    assert alarms["UsageApiLatencyAlarm"]["ExtendedStatistic"] == "p99"
    assert alarms["UsageApiThrottledAlarm"]["MetricName"] == "UsageApiThrottledRequests"
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "OperatorTopic"}], name
        [anchor] = re.findall(r"docs/runbook\.md#([a-z0-9-]+)", json.dumps(alarm["AlarmDescription"]))
        assert f"\n## {anchor}\n" in runbook, name
    metric_filter = RESOURCES["UsageApiThrottledRequests"]["Properties"]
    assert metric_filter["FilterPattern"] == "{ $.status = 429 }"
    assert metric_filter["MetricTransformations"][0]["MetricName"] == "UsageApiThrottledRequests"
