"""The census of the functions' roles (issue 7 §1, §5): every call each function makes, on the sample month
replayed by `simulate` and on the paths the month does not take (the SNS copy of a usage alert, a close run
handing over to a new invocation, the Usage API read on every route), is granted by the role its
`template.yaml` entry names, resource ARNs included; and every grant is used, by a call or by AWS on the
function's behalf (`metering_testbench.census.ON_BEHALF_USES`), or kept for the reason written in
KEPT_UNUSED."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest
from metering_testbench.census import CensusTally, Findings
from metering_tools.local_stack import LocalStack
from metering_tools.roles import RoleGuard
from metering_tools.simulate import Simulation, SimulationOptions, simulate
from metering_tools.template import functions, load_template

from tests.api.conftest import UsageApiClient, staff
from tests.harness import Metering
from tests.helpers import REPO_ROOT, contact_events, contact_ids, failed_ids, subscription_changed

pytestmark = pytest.mark.slow

TEMPLATE = load_template()
SAMPLE_MONTH = REPO_ROOT / "events" / "sample-month.jsonl"
NOW = datetime(2026, 11, 2, tzinfo=UTC)
CLOSE_DUE = "2026-11-01T06:00:00Z"

KEPT_UNUSED: dict[tuple[str, str, str], str] = {
    (
        "CountContacts",
        "Table",
        "dynamodb:BatchWriteItem",
    ): "a counter's snapshot past its first 20,000 contacts "
    "goes in BatchWriteItem: only a period whose bootstrap scan finds more, which no month here has",
}
"""(function, statement, action) of a grant no call uses that stays all the same -> the reason it stays."""


def contacts_counted_in_two_stream_batches(metering: Metering) -> None:
    """A period's counter started by the first of two stream batches: the second, within the minute, reads the
    snapshot of what the first one's scan counted."""
    metering.record_events(contact_events("acc-counted", contact_ids("con", 50), "2026-10-05T09:00:00Z"))
    assert len(metering.count_new_contacts(batch_size=30)) == 2


def usage_alert_copied_to_sns(metering: Metering, guard: RoleGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """RecordActivity deployed with the usage-alert topic (named as the template names it), an account
    crossing 80 % of its allowance."""
    topic = guard.roles.resolver.attributes["UsageAlertTopic"]["TopicName"]
    topic_arn = boto3.client("sns").create_topic(Name=topic)["TopicArn"]
    assert topic_arn == guard.roles.resolver.refs["UsageAlertTopic"]
    monkeypatch.setenv("USAGE_ALERT_TOPIC_ARN", topic_arn)
    metering.cold_start()
    metering.record_events([subscription_changed("acc-census", "start", "2026-09-01T00:00:00Z")])
    _, response = metering.record_events(
        contact_events("acc-census", contact_ids("con", 40), "2026-10-05T09:00:00Z")
    )
    assert failed_ids(response) == []
    assert [alert["thresholdPercent"] for alert in metering.events_published("Usage Threshold Reached")] == [
        80
    ]


def close_handed_over(metering: Metering, monkeypatch: pytest.MonkeyPatch) -> None:
    """ClosePeriods deployed with RecordActivity's real timeout, running out of time before the fence of the
    period it sealed: it invokes itself to go on."""
    monkeypatch.setenv("RECORDER_TIMEOUT_SECONDS", "60")
    metering.cold_start()
    handed_over = metering.accept_hand_overs()
    run = metering.schedule_closes(CLOSE_DUE, remaining_seconds=60)
    assert run["handedOver"]
    assert len(handed_over) == 1


def usage_read_through_the_api(metering: Metering) -> None:
    """Billing staff read an account through every route of the Usage API, paging its contacts with a cursor
    (the cursor key is read from its secret)."""
    metering.record_events(contact_events("acc-census", contact_ids("api", 3), "2026-10-06T09:00:00Z"))
    metering.close(CLOSE_DUE)
    routes = [
        ("/v1/accounts/acc-census/usage", "period=2026-10"),
        ("/v1/accounts/acc-census/contacts", "period=2026-10&limit=2"),
        ("/v1/accounts/acc-census/invoices", ""),
        ("/v1/accounts/acc-census/alerts", "period=2026-10"),
        ("/v1/openapi.json", ""),
    ]
    answers = [UsageApiClient(metering).get(path, query, token=staff()) for path, query in routes]
    assert [answer.status for answer in answers] == [200] * len(routes)
    cursor = answers[1].json["nextCursor"]
    follow = UsageApiClient(metering).get(routes[1][0], f"{routes[1][1]}&cursor={cursor}", token=staff())
    assert follow.status == 200


def described(findings: list[Findings]) -> str:
    return "\n".join(found.describe() for found in findings)


def test_every_call_is_granted_and_every_grant_is_used_or_kept_for_a_reason(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the sample month replayed by simulate, each function as its role
    tally = CensusTally()

    def tally_replay(run: Simulation) -> None:
        assert run.guard is not None, "simulate on embedded moto runs each function as its role"
        tally.add(run.guard)

    report = simulate(SimulationOptions(events_path=SAMPLE_MONTH, now=NOW), after_replay=tally_replay)
    assert report["invoices"]
    assert report["stats"]["invocations"].keys() == {
        "RecordActivity",
        "ClosePeriods",
        "InvoiceAccount",
        "CountContacts",
    }
    # And the paths the month does not take, run by the harness on a stack of its own
    guard = RoleGuard.install(TEMPLATE, stack)
    with guard.enforced(), Metering.running(stack, TEMPLATE, guard) as metering:
        usage_alert_copied_to_sns(metering, guard, monkeypatch)
        close_handed_over(metering, monkeypatch)
        usage_read_through_the_api(metering)
        contacts_counted_in_two_stream_batches(metering)
    tally.add(guard)

    # When the census of both is checked against the roles
    findings = tally.findings()

    # Then every function was invoked, and none made a call its role does not grant
    assert findings.keys() == set(functions(TEMPLATE))
    ungranted = [found for found in findings.values() if found.ungranted]
    assert ungranted == [], described(ungranted)
    # And every grant is used, by a call or by AWS for the function, unless kept for its written reason
    unused = {(name, grant.sid, grant.action) for name, found in findings.items() for grant in found.unused}
    unexplained = [
        found
        for found in findings.values()
        if any((found.function, grant.sid, grant.action) not in KEPT_UNUSED for grant in found.unused)
    ]
    assert unexplained == [], described(unexplained)
    # And every reason kept is for a grant that is still unused
    assert set(KEPT_UNUSED) <= unused
