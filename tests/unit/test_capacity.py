"""Capacity units from item sizes (tools/metering_tools/capacity.py): DynamoDB's size rules, the unit
arithmetic, the classifier of today's keys, and one meter attached to a client on embedded moto."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from metering.model import PeriodRef
from metering.store import keys
from metering.store.keys import family
from metering_tools.capacity import (
    COUNT_PATH,
    CapacityMeter,
    item_size,
    number_size,
    read_units,
    value_size,
    write_unit_equivalents,
    write_units,
)
from moto import mock_aws

# ---- item sizes ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("7", 2, id="one-digit"),
        pytest.param("12345", 4, id="five-digits-three-pairs"),
        pytest.param("1000", 2, id="trailing-zeros-trimmed"),
        pytest.param("0.00123", 3, id="leading-zeros-trimmed"),
        pytest.param("-12", 2, id="sign-is-not-a-digit"),
        pytest.param("1234567890123456789012345678901234567", 20, id="thirty-seven-digits"),
    ],
)
def test_a_number_takes_a_byte_per_two_significant_digits_plus_one(text: str, expected: int) -> None:
    # Given a number as DynamoDB JSON carries it
    # When it is sized
    # Then it takes one byte per two significant digits, rounded up, plus one
    assert number_size(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"S": "abc"}, 3, id="string"),
        pytest.param({"S": "Grüße"}, 7, id="string-counts-utf8-bytes"),
        pytest.param({"B": b"\x00\x01\x02\x03"}, 4, id="binary-raw"),
        pytest.param({"B": "AAECAw=="}, 4, id="binary-base64-counts-raw-bytes"),
        pytest.param({"BOOL": True}, 1, id="boolean"),
        pytest.param({"NULL": True}, 1, id="null"),
        pytest.param({"SS": ["ab", "cde"]}, 5, id="string-set"),
        pytest.param({"NS": ["1", "12345"]}, 6, id="number-set"),
        pytest.param({"L": []}, 3, id="empty-list"),
        pytest.param({"M": {}}, 3, id="empty-map"),
        pytest.param({"L": [{"S": "ab"}, {"N": "7"}]}, 3 + (1 + 2) + (1 + 2), id="list-overhead-per-element"),
        pytest.param({"M": {"k": {"S": "ab"}}}, 3 + 1 + 1 + 2, id="map-entry-counts-its-name"),
        pytest.param(
            {"M": {"a": {"M": {"bb": {"BOOL": False}}}}}, 3 + 1 + 1 + (3 + 1 + 2 + 1), id="nested-map"
        ),
    ],
)
def test_values_are_sized_by_the_documented_rules(value: dict[str, Any], expected: int) -> None:
    # Given one attribute value of each type
    # When it is sized without its name
    # Then it takes the documented number of bytes
    assert value_size(value) == expected


def test_an_item_is_the_sum_of_its_attribute_names_and_values() -> None:
    # Given an item with a string, a number and a map
    item: dict[str, dict[str, Any]] = {"pk": {"S": "acc-1#2026-10"}, "n": {"N": "263"}, "alerts": {"M": {}}}

    # When it is sized
    # Then every name counts with its value
    assert item_size(item) == (2 + 13) + (1 + 3) + (6 + 3)
    assert item_size(None) == 0


# ---- unit arithmetic ----


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, 1), (1, 1), (1024, 1), (1025, 2), (4096, 4)],
)
def test_a_write_costs_one_unit_per_started_kilobyte(size: int, expected: int) -> None:
    # Given an item size
    # When its write is priced
    # Then each started KB costs a unit, and a write costs at least one
    assert write_units(size) == expected


@pytest.mark.parametrize(
    ("size", "consistent", "expected"),
    [
        pytest.param(0, True, 1.0, id="missing-item-strong"),
        pytest.param(0, False, 0.5, id="missing-item-eventual"),
        pytest.param(4096, True, 1.0, id="four-kb-strong"),
        pytest.param(4097, True, 2.0, id="past-four-kb-strong"),
        pytest.param(4097, False, 1.0, id="past-four-kb-eventual"),
    ],
)
def test_a_read_costs_one_unit_per_started_4_kb_halved_when_eventual(
    size: int, consistent: bool, expected: float
) -> None:
    # Given an amount read and its consistency
    # When the read is priced
    # Then each started 4 KB costs a unit, half of it when eventually consistent
    assert read_units(size, consistent=consistent) == expected


def test_write_unit_equivalents_count_five_read_units_as_one_write_unit() -> None:
    # Given 10 WRU and 5 RRU
    # When they are expressed in SPEC §6's figure
    # Then the reads weigh a fifth
    assert write_unit_equivalents(10.0, 5.0) == 11.0


# ---- today's key layout ----


REF = PeriodRef("acc-1", "2026-10")


@pytest.mark.parametrize(
    ("item_key", "path"),
    [
        (keys.contact_key(REF, "c-1"), "contact"),
        (keys.alerts_key(REF), "alerts"),
        (keys.late_key(REF, "e-1"), "late"),
        (keys.invoice_key(REF), "invoice"),
        (keys.subscription_key("acc-1", datetime(2026, 10, 3, tzinfo=UTC), "e-2"), "subscription"),
        (keys.close_key("2026-10"), "close state"),
        (keys.key(keys.rejected_pk("2026-10"), "e-3"), "rejected"),
    ],
)
def test_units_are_charged_to_the_family_the_key_names(item_key: keys.Key, path: str) -> None:
    # Given an item key built by the store's key module
    # When the meter's default classifier names its path
    # Then it is the item family that key belongs to
    assert family(*keys.key_of(item_key)) == path


# ---- the meter on embedded moto ----

TABLE = "capacity-test"


def _padded(pk: str, sk: str, size: int) -> dict[str, Any]:
    """An item of exactly `size` bytes."""
    item = {"pk": {"S": pk}, "sk": {"S": sk}, "pad": {"S": ""}}
    item["pad"] = {"S": "x" * (size - item_size(item))}
    assert item_size(item) == size
    return item


@pytest.fixture
def metered() -> Iterator[tuple[Any, CapacityMeter]]:
    """A client on a moto table keyed like MeteringTable (`pk`, `sk`, no index), and a meter that names
    paths by the sort-key prefix."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-central-1")
        client.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk")],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
        )
        meter = CapacityMeter(classify=lambda pk, sk: sk.split("#")[0])
        meter.attach(client)
        yield client, meter


def _write_units(meter: CapacityMeter) -> dict[str, float]:
    return dict(meter.stats()["writeUnits"])


def _read_units(meter: CapacityMeter) -> dict[str, float]:
    return {path: units["readUnits"] for path, units in meter.stats()["byPath"].items() if units["readUnits"]}


@pytest.mark.slow
def test_the_meter_charges_what_aws_bills_from_item_sizes(metered: tuple[Any, CapacityMeter]) -> None:
    client, meter = metered

    # Given an item of 900 bytes
    client.put_item(TableName=TABLE, Item=_padded("p", "doc#1", 900))
    assert _write_units(meter) == {"PutItem": 1.0}

    # When a put grows it past 1 KB
    client.put_item(TableName=TABLE, Item=_padded("p", "doc#1", 1100))
    # Then it costs 2 WRU
    assert _write_units(meter) == {"PutItem": 3.0}

    # When a conditional put of the same size fails on the existing item
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.put_item(
            TableName=TABLE, Item=_padded("p", "doc#1", 1100), ConditionExpression="attribute_not_exists(pk)"
        )
    # Then it costs what the write would have
    assert _write_units(meter) == {"PutItem": 5.0}

    # When an update shrinks it below 1 KB, and a delete removes it
    client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "p"}, "sk": {"S": "doc#1"}},
        UpdateExpression="SET #pad = :short",
        ExpressionAttributeNames={"#pad": "pad"},
        ExpressionAttributeValues={":short": {"S": "x"}},
    )
    client.delete_item(TableName=TABLE, Key={"pk": {"S": "p"}, "sk": {"S": "doc#1"}})
    # Then the update costs by the larger image (before it), the delete by the smaller item it deleted
    assert _write_units(meter) == {"PutItem": 5.0, "UpdateItem": 2.0, "DeleteItem": 1.0}

    # Given 100 items of 200 bytes in one partition
    for number in range(100):
        client.put_item(TableName=TABLE, Item=_padded("q", f"row#{number:03d}", 200))
    # When they are counted with an eventually consistent Query
    count = client.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "q"}},
        Select="COUNT",
    )["Count"]
    # Then every item is read: 20,000 bytes are 5 units of 4 KB, halved
    assert count == 100
    assert meter.stats()["readUnits"] == {"Query": 2.5}
    assert meter.stats()["byPath"][COUNT_PATH]["readUnits"] == 2.5
    assert "unmeteredCalls" not in meter.stats()


@pytest.mark.slow
def test_a_query_is_charged_for_the_items_its_key_condition_evaluates(
    metered: tuple[Any, CapacityMeter],
) -> None:
    client, meter = metered

    # Given ten contacts of 1,000 bytes and a summary of 3,000 bytes in one partition
    for number in range(10):
        client.put_item(TableName=TABLE, Item=_padded("k", f"contact#{number:02d}", 1000))
    client.put_item(TableName=TABLE, Item=_padded("k", "summary", 3000))
    prefix = {
        "TableName": TABLE,
        "KeyConditionExpression": "#p = :pk AND begins_with(#s, :prefix)",
        "ExpressionAttributeNames": {"#p": "pk", "#s": "sk"},
        "ConsistentRead": True,
    }

    # When the contacts are read backwards in consistent pages of five, through placeholders
    first = client.query(
        **prefix,
        ExpressionAttributeValues={":pk": {"S": "k"}, ":prefix": {"S": "contact#"}},
        Limit=5,
        ScanIndexForward=False,
    )
    client.query(
        **prefix,
        ExpressionAttributeValues={":pk": {"S": "k"}, ":prefix": {"S": "contact#"}},
        Limit=5,
        ScanIndexForward=False,
        ExclusiveStartKey=first["LastEvaluatedKey"],
    )
    # Then each page reads its five contacts (5,000 bytes, 2 RRU) and never the summary
    assert first["Items"][0]["sk"] == {"S": "contact#09"}
    assert _read_units(meter) == {"contact": 4.0}

    # When a range reaches from the last contacts to the summary, with a filter that keeps nothing
    found = client.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk AND sk BETWEEN :from AND :to",
        FilterExpression="attribute_not_exists(#pad)",
        ExpressionAttributeNames={"#pad": "pad"},
        ExpressionAttributeValues={":pk": {"S": "k"}, ":from": {"S": "contact#08"}, ":to": {"S": "summary"}},
        ConsistentRead=True,
    )
    # Then the filter saves nothing: 5,000 bytes cost 2 RRU, split over the families by size
    assert found["Count"] == 0
    assert _read_units(meter) == {"contact": 4.0 + 0.8, "summary": 1.2}

    # When an eventually consistent Query finds nothing
    client.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues={":pk": {"S": "k"}, ":prefix": {"S": "late#"}},
    )
    # Then it costs half a unit, charged to the family its key condition names
    assert _read_units(meter) == {"contact": 4.8, "summary": 1.2, "late": 0.5}
    assert "unmeteredCalls" not in meter.stats()


@pytest.mark.slow
def test_a_call_the_meter_does_not_charge_is_counted_and_answered(metered: tuple[Any, CapacityMeter]) -> None:
    client, meter = metered

    # Given an item
    client.put_item(TableName=TABLE, Item=_padded("p", "doc#1", 500))

    # When it is read by a Scan, a transaction and a Query in the legacy KeyConditions form
    scanned = client.scan(TableName=TABLE)
    got = client.transact_get_items(
        TransactItems=[{"Get": {"TableName": TABLE, "Key": {"pk": {"S": "p"}, "sk": {"S": "doc#1"}}}}]
    )
    queried = client.query(
        TableName=TABLE,
        KeyConditions={"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "p"}]}},
    )

    # Then every call is answered as without the meter, none is charged, and each is counted as unmetered
    assert scanned["Count"] == 1
    assert len(got["Responses"]) == 1
    assert queried["Count"] == 1
    assert meter.stats()["readUnits"] == {}
    assert meter.stats()["unmeteredCalls"] == {"Query": 1, "Scan": 1, "TransactGetItems": 1}


@pytest.mark.slow
def test_the_meter_names_the_largest_item_written_repeatedly(metered: tuple[Any, CapacityMeter]) -> None:
    client, meter = metered

    # Given one item written three times, growing, and another written once but larger
    for size in (300, 600, 900):
        client.put_item(TableName=TABLE, Item=_padded("p", "summary#1", size))
    client.put_item(TableName=TABLE, Item=_padded("p", "contact#1", 2000))

    # When the meter reports
    largest = meter.stats()["largestRepeatedlyWrittenItem"]

    # Then only the item written more than once counts, at its largest
    assert largest == {"bytes": 900, "writes": 3, "path": "summary"}
