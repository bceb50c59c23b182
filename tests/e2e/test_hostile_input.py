"""Hostile input end to end: every body of `tests/hostile/` (SPEC §2's rejections and worse) is rejected by
RecordActivity (stored once with a short, clear reason, never retried) while the valid events beside it
count; an operator lists rejections and replays a corrected version exactly once (library and CLI)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from metering import aws
from metering.model import PeriodRef
from metering.store import keys
from metering_tools import cli
from metering_tools.local_stack import LocalStack, provision
from metering_tools.operations import list_rejected, replay_rejected
from metering_tools.roles import RoleGuard
from metering_tools.template import load_template
from metering_tools.testkit import sqs_event, sqs_record
from moto import mock_aws

from tests.harness import Metering
from tests.helpers import contact_event, failed_ids, redelivery

HOSTILE_DIR = Path(__file__).resolve().parents[1] / "hostile"
BUCKET_PLACEHOLDER = "${CLAIM_CHECK_BUCKET}"
OCTOBER = "2026-10"
OCCURRED_AT = "2026-10-05T10:00:00Z"
MAX_REASON_LENGTH = 500
BYSTANDERS = ("acc-valid-a", "acc-valid-b")
TEMPLATE = load_template()


@dataclass(frozen=True)
class HostileCase:
    """One corpus file and what its rejection must look like (from `tests/hostile/cases.json`)."""

    file: str
    kind: str
    reason: str
    event_id: str
    """The id the rejection is stored under; `sqs:` means `sqs:<messageId>` (no usable envelope id)."""
    objects: Mapping[str, str] = field(default_factory=dict)
    """Claim-check objects to upload to the stack's bucket first (key -> text)."""

    def body(self, stack: LocalStack) -> str:
        """The raw SQS body; the only substitution is the stack's claim-check bucket name."""
        text = (HOSTILE_DIR / self.file).read_text(encoding="utf-8")
        return text.replace(BUCKET_PLACEHOLDER, stack.claim_check_bucket)

    def stored_id(self, message_id: str) -> str:
        return f"sqs:{message_id}" if self.event_id == "sqs:" else self.event_id


def _load_cases() -> dict[str, HostileCase]:
    index: dict[str, dict[str, Any]] = json.loads((HOSTILE_DIR / "cases.json").read_text(encoding="utf-8"))
    return {
        name: HostileCase(
            file=name,
            kind=entry["kind"],
            reason=entry["reason"],
            event_id=entry["eventId"],
            objects=entry.get("objects", {}),
        )
        for name, entry in index.items()
    }


CASES = _load_cases()


def bystanders() -> list[dict[str, Any]]:
    """Two valid events of two other accounts, delivered in the same batch as the hostile body."""
    return [contact_event(account, "con-1", OCCURRED_AT) for account in BYSTANDERS]


def upload_objects(stack: LocalStack, case: HostileCase) -> None:
    s3 = boto3.client("s3")
    for key, text in case.objects.items():
        s3.put_object(Bucket=stack.claim_check_bucket, Key=key, Body=text.encode())


def rejected_items(metering: Metering) -> list[tuple[str, str]]:
    """Every stored rejection as (month partition, event id), duplicates kept."""
    return sorted(
        (item["pk"]["S"], item["sk"]["S"])
        for item in metering.scan_items()
        if item["pk"]["S"].startswith(keys.REJECTED_PREFIX)
    )


def month_of(metering: Metering, event_id: str) -> str:
    """The receipt month a rejection is filed under (robust to a test running across midnight)."""
    return metering.rejections()[event_id]["pk"].removeprefix(keys.REJECTED_PREFIX)


def assert_bystanders_counted_alone(metering: Metering) -> None:
    assert [(row["accountId"], row["activeContacts"]) for row in metering.report()["usage"]] == [
        (account, 1) for account in BYSTANDERS
    ]
    for account in BYSTANDERS:
        assert metering.counts(account, OCTOBER) == (1, {"con-1"})


# ---- the corpus ----


def test_the_corpus_covers_at_least_30_kinds_and_every_file_is_indexed() -> None:
    files = {path.name for path in HOSTILE_DIR.iterdir() if path.suffix in {".json", ".txt"}}
    assert files - {"cases.json"} == set(CASES)
    assert len(CASES) >= 30
    readme = (HOSTILE_DIR / "README.md").read_text(encoding="utf-8")
    assert [name for name in CASES if f"`{name}`" not in readme] == []


def test_a_hostile_body_delivered_twice_within_one_batch_is_stored_once(metering: Metering) -> None:
    # Given a batch in which SQS delivers the same hostile message twice (two message ids, one envelope id)
    body = CASES["contact_id_hash.json"].body(metering.stack)
    batch = sqs_event([body, *bystanders(), body])
    # When RecordActivity processes it
    response = metering.record(batch)
    # Then nothing is retried, the valid events count, and one rejection is stored under the envelope id
    assert failed_ids(response) == []
    assert_bystanders_counted_alone(metering)
    assert [event_id for _, event_id in rejected_items(metering)] == ["hostile-contact-id-hash"]


# ---- operator: list and replay ----

LISTED = (
    "truncated.json",
    "s3_notification.json",
    "deeply_nested_detail.json",
    "contact_id_number.json",
    "plan_unknown.json",
    "claim_check_missing_object.json",
)


def test_list_rejected_lists_each_rejection_with_its_reason(metering: Metering, stack: LocalStack) -> None:
    # Given a batch of six hostile bodies of different kinds and two valid events
    cases = [CASES[name] for name in LISTED]
    batch = sqs_event([*bystanders(), *(case.body(stack) for case in cases)])
    message_ids = [record["messageId"] for record in batch["Records"][2:]]
    assert failed_ids(metering.record(batch)) == []
    expected = {case.stored_id(message_id): case for case, message_id in zip(cases, message_ids, strict=True)}

    # When the operator lists the month's rejected events
    month = month_of(metering, "hostile-contact-id-number")
    listed = list_rejected(metering.store, month)

    # Then each of them is listed once, with its reason and time of receipt
    assert sorted(row["eventId"] for row in listed) == sorted(expected)
    for row in listed:
        assert expected[row["eventId"]].reason in row["reason"]
        assert row["receivedAt"].startswith(month)


def test_a_replayed_correction_is_counted_exactly_once(metering: Metering, stack: LocalStack) -> None:
    # Given two rejected events: one with a numeric contactId, one truncated (filed under its message id)
    numeric, truncated = CASES["contact_id_number.json"], CASES["truncated.json"]
    batch = sqs_event([numeric.body(stack), truncated.body(stack)])
    truncated_id = truncated.stored_id(batch["Records"][1]["messageId"])
    assert failed_ids(metering.record(batch)) == []
    month = month_of(metering, numeric.event_id)
    # And the stack's activity queue
    queue_url = boto3.client("sqs").create_queue(QueueName=f"{stack.table_name}-activity")["QueueUrl"]

    # When the operator replays a corrected version of each into the activity queue
    fixed_number = json.loads(numeric.body(stack))
    fixed_number["detail"]["contactId"] = "con-1"
    completed = contact_event("acc-hostile", "con-2", OCCURRED_AT, event_id="hostile-truncated")
    replay_rejected(metering.store, month, numeric.event_id, queue_url, json.dumps(fixed_number))
    replay_rejected(metering.store, month, truncated_id, queue_url, json.dumps(completed))
    # And RecordActivity receives what the queue holds
    messages = receive_all(queue_url)
    delivered = {"Records": [sqs_record(m["Body"], m["MessageId"]) for m in messages]}
    response = metering.record(delivered)

    # Then both are counted once and the rejections are gone
    assert len(messages) == 2
    assert failed_ids(response) == []
    assert metering.counts("acc-hostile", OCTOBER) == (2, {"con-1", "con-2"})
    assert list_rejected(metering.store, month) == []

    # When the operator replays again, SQS redelivers the replayed messages, and the CRM resends one
    with pytest.raises(LookupError):
        replay_rejected(metering.store, month, numeric.event_id, queue_url, json.dumps(fixed_number))
    metering.cold_start()
    redelivered = metering.record(redelivery(delivered))
    resent = metering.record(sqs_event([fixed_number]))
    # Then nothing more is sent, counted or rejected
    assert receive_all(queue_url) == []
    assert failed_ids(redelivered) == failed_ids(resent) == []
    assert metering.counts("acc-hostile", OCTOBER) == (2, {"con-1", "con-2"})
    assert rejected_items(metering) == []


def receive_all(queue_url: str) -> list[dict[str, Any]]:
    """Every message on a queue, deleted as a Lambda event source mapping does after a successful batch."""
    sqs = boto3.client("sqs")
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        messages += [dict(message) for message in batch]
    return messages


# ---- operator: the command line ----


def test_the_cli_lists_rejections_as_json_and_replays_a_correction(
    metering: Metering, stack: LocalStack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given a rejected event with an unknown plan, beside two valid events
    case = CASES["plan_unknown.json"]
    assert failed_ids(metering.record(sqs_event([*bystanders(), case.body(stack)]))) == []
    month = month_of(metering, case.event_id)
    capsys.readouterr()

    # When the operator runs `metering rejected list`
    code = cli.main(["rejected", "list", "--table", stack.table_name, "--month", month])
    # Then it prints the rejection as JSON
    assert code == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["eventId"] for row in listed] == [case.event_id]
    assert case.reason in listed[0]["reason"]

    # When the operator replays a corrected file with `metering rejected replay`, and lists again
    queue_url = boto3.client("sqs").create_queue(QueueName=f"{stack.table_name}-activity")["QueueUrl"]
    corrected = json.loads(case.body(stack))
    corrected["detail"]["plan"] = "grow"
    corrected_file = tmp_path / "corrected.json"
    corrected_file.write_text(json.dumps(corrected, indent=2) + "\n", encoding="utf-8")
    replay = [
        *("rejected", "replay", "--table", stack.table_name, "--month", month),
        *("--event-id", case.event_id, "--queue-url", queue_url, "--corrected", str(corrected_file)),
    ]
    assert cli.main(replay) == 0
    replayed_output = capsys.readouterr().out
    assert cli.main(["rejected", "list", "--table", stack.table_name, "--month", month]) == 0
    # Then the corrected envelope is on the activity queue and the list is empty
    assert case.event_id in replayed_output
    assert json.loads(capsys.readouterr().out) == []
    assert [json.loads(m["Body"]) for m in receive_all(queue_url)] == [corrected]


# ---- the corpus, case by case (last: it shares one stack) ----


@pytest.fixture(scope="module")
def corpus_metering() -> Iterator[Metering]:
    """One moto stack (built like `conftest.stack`, run like `conftest.metering`) for every corpus case:
    provisioning one per case would cost most of the run. Each case has its own bystander accounts and
    compares the table before and after."""
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        aws.reset_clients()
        suffix = uuid.uuid4().hex[:10]
        local = provision(f"hostile-{suffix}", f"metering-hostile-claims-{suffix}", TEMPLATE)
        for name, value in local.environment(TEMPLATE).items():
            patch.setenv(name, value)
        guard = RoleGuard.install(TEMPLATE, local)
        with guard.enforced(), Metering.running(local, TEMPLATE, guard) as running:
            yield running
        aws.reset_clients()


@dataclass(frozen=True)
class StoredState:
    """What a batch can leave behind: rejections ((partition, event id) -> reason) and contact items per
    period."""

    rejections: dict[tuple[str, str], str]
    usage: dict[str, int]

    @classmethod
    def read(cls, metering: Metering) -> StoredState:
        rejections: dict[tuple[str, str], str] = {}
        usage: dict[str, int] = {}
        pages = (
            boto3.client("dynamodb")
            .get_paginator("scan")
            .paginate(
                TableName=metering.stack.table_name,
                ConsistentRead=True,
                FilterExpression="begins_with(sk, :contact) OR begins_with(pk, :rejected)",
                ProjectionExpression="pk, sk, reason",
                ExpressionAttributeValues={
                    ":contact": {"S": keys.CONTACT_PREFIX},
                    ":rejected": {"S": keys.REJECTED_PREFIX},
                },
            )
        )
        for item in (item for page in pages for item in page["Items"]):
            pk, sk = item["pk"]["S"], item["sk"]["S"]
            if pk.startswith(keys.REJECTED_PREFIX):
                rejections[(pk, sk)] = item["reason"]["S"]
            else:
                usage[pk] = usage.get(pk, 0) + 1
        return cls(rejections, usage)

    def since(self, before: StoredState) -> StoredState:
        return StoredState(
            {key: reason for key, reason in self.rejections.items() if key not in before.rejections},
            {pk: count for pk, count in self.usage.items() if before.usage.get(pk) != count},
        )


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_a_hostile_body_is_rejected_once_with_a_short_reason_while_its_batch_counts(
    corpus_metering: Metering, case: HostileCase
) -> None:
    metering, stack = corpus_metering, corpus_metering.stack
    # Given the claim-check objects the case names, and a batch of the hostile body between two valid
    # events of two accounts of this case
    upload_objects(stack, case)
    accounts = [f"acc-{case.file.split('.')[0].replace('_', '-')}-{side}" for side in "ab"]
    valid_a, valid_b = (contact_event(account, "con-1", OCCURRED_AT) for account in accounts)
    batch = sqs_event([valid_a, case.body(stack), valid_b])
    expected_id = case.stored_id(batch["Records"][1]["messageId"])
    before = StoredState.read(metering)

    # When RecordActivity processes the batch, and SQS delivers the same batch once more
    first = metering.record(batch)
    again = metering.record(redelivery(batch))
    stored = StoredState.read(metering).since(before)

    # Then no record is reported failed: a rejection is recorded, not retried
    assert failed_ids(first) == failed_ids(again) == [], case.kind
    # And the two valid events count, and nothing of the hostile body does
    assert stored.usage == {keys.period_pk(PeriodRef(account, OCTOBER)): 1 for account in accounts}, case.kind
    # And the rejection is stored once, under the event's id (or the SQS message id when it has none)
    assert [event_id for _, event_id in stored.rejections] == [expected_id], case.kind
    # And its reason says what is wrong, briefly, without echoing the input
    [reason] = stored.rejections.values()
    assert case.reason in reason, (case.kind, reason[:300])
    assert len(reason) < MAX_REASON_LENGTH, (case.kind, len(reason), reason[:300])
