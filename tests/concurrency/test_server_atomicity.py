"""The tier's own premise: the server applies each DynamoDB write atomically, as DynamoDB applies the writes
to one item. moto's threaded `moto_server` does not (racing `ADD :1` updates of one item were measured to
store 1,821 after 1,800), so a count there could be wrong for the server's sake, not the code's."""

from __future__ import annotations

import multiprocessing
import os

import boto3
import pytest

from tests.concurrency.conftest import LOCAL_AWS, ServerStack

pytestmark = pytest.mark.slow

WORKERS = 4
INCREMENTS = 200
COUNTER_KEY = {"pk": {"S": "atomicity#probe"}, "sk": {"S": "summary"}}


def increment_worker(endpoint: str, table_name: str, worker: int) -> None:
    """Add 1 to the probe's counter INCREMENTS times, each time recording a new key in its map."""
    os.environ.update({**LOCAL_AWS, "AWS_ENDPOINT_URL": endpoint})
    client = boto3.client("dynamodb")
    for number in range(INCREMENTS):
        client.update_item(
            TableName=table_name,
            Key=COUNTER_KEY,
            UpdateExpression="ADD activeContacts :one SET recent.#attempt = :one",
            ConditionExpression="attribute_exists(recent) AND attribute_not_exists(recent.#attempt)",
            ExpressionAttributeNames={"#attempt": f"w{worker}-{number}"},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )


def test_racing_conditional_increments_of_one_item_are_each_applied_once(server_stack: ServerStack) -> None:
    # Given a summary-shaped item on the server
    client = boto3.client("dynamodb")
    table_name = server_stack.stack.table_name
    client.put_item(
        TableName=table_name, Item={**COUNTER_KEY, "activeContacts": {"N": "0"}, "recent": {"M": {}}}
    )

    # When four processes race conditional `ADD :1` updates of that item
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=increment_worker, args=(server_stack.endpoint, table_name, worker))
        for worker in range(WORKERS)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=240)
    assert [process.exitcode for process in workers] == [0] * WORKERS

    # Then every increment is applied exactly once
    item = client.get_item(TableName=table_name, Key=COUNTER_KEY, ConsistentRead=True)["Item"]
    assert int(item["activeContacts"]["N"]) == WORKERS * INCREMENTS
    assert len(item["recent"]["M"]) == WORKERS * INCREMENTS
