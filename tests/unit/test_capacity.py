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
    INDEX_PATH,
    CapacityMeter,
    IndexSchema,
    KeyCondition,
    index_write_units,
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


# ---- secondary index entries ----

OPEN_PERIODS = IndexSchema("OpenPeriods", "openPeriod", "openPeriodEnd", "KEYS_ONLY", ())
TABLE_KEYS = ("pk", "sk")
SUMMARY = {"pk": {"S": "acc-1#2026-10"}, "sk": {"S": "summary"}, "activeContacts": {"N": "3"}}
OPEN = {**SUMMARY, "openPeriod": {"S": "open"}, "openPeriodEnd": {"S": "2026-11-01T00:00:00Z"}}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(None, SUMMARY, 0, id="never-in-the-index"),
        pytest.param(SUMMARY, OPEN, 1, id="put-when-the-keys-appear"),
        pytest.param(OPEN, SUMMARY, 1, id="delete-when-the-keys-go"),
        pytest.param(
            OPEN,
            {**OPEN, "openPeriodEnd": {"S": "2026-12-01T00:00:00Z"}},
            2,
            id="key-change-is-delete-and-put",
        ),
        pytest.param(
            OPEN, {**OPEN, "activeContacts": {"N": "4"}}, 0, id="keys-only-ignores-other-attributes"
        ),
    ],
)
def test_an_index_entry_costs_what_the_write_does_to_it(
    old: dict[str, Any] | None, new: dict[str, Any], expected: int
) -> None:
    # Given a table write that turns the item `old` into `new`
    # When its cost on a sparse KEYS_ONLY index is priced
    # Then a put or a delete costs a unit, a key change both, and an unprojected change nothing
    assert index_write_units(OPEN_PERIODS, TABLE_KEYS, old, new) == expected


def test_a_keys_only_entry_holds_the_index_keys_and_the_table_keys() -> None:
    # Given an open summary
    # When it is projected into the KEYS_ONLY index
    entry = OPEN_PERIODS.entry(OPEN, TABLE_KEYS)

    # Then only the four keys remain
    assert entry is not None
    assert sorted(entry) == ["openPeriod", "openPeriodEnd", "pk", "sk"]


# ---- key conditions ----


def test_a_key_condition_expression_is_read_with_its_names_and_values() -> None:
    # Given a Query on a partition with a sort-key prefix, through placeholders
    params = {
        "KeyConditionExpression": "#p = :pk AND begins_with(#s, :prefix)",
        "ExpressionAttributeNames": {"#p": "pk", "#s": "sk"},
        "ExpressionAttributeValues": {":pk": {"S": "acc-1#2026-10"}, ":prefix": {"S": "contact#"}},
    }

    # When it is parsed
    condition = KeyCondition.parse(params, "pk")

    # Then it names the partition and keeps only sort keys with the prefix
    assert condition.partition_text == "acc-1#2026-10"
    assert condition.sort_hint == "contact#"
    assert condition.accepts({"sk": {"S": "contact#c1"}})
    assert not condition.accepts({"sk": {"S": "summary"}})


@pytest.mark.parametrize(
    ("expression", "sort_key", "accepted"),
    [
        pytest.param("pk = :p AND sk BETWEEN :a AND :b", "b", True, id="between-inclusive"),
        pytest.param("pk = :p AND sk BETWEEN :a AND :b", "c", False, id="between-outside"),
        pytest.param("(pk = :p) AND (sk <= :a)", "a", True, id="parenthesised-at-most"),
        pytest.param("sk > :a AND pk = :p", "a", False, id="sort-condition-first"),
    ],
)
def test_sort_key_conditions_compare_like_dynamodb(expression: str, sort_key: str, accepted: bool) -> None:
    # Given a key condition on strings
    params = {
        "KeyConditionExpression": expression,
        "ExpressionAttributeValues": {":p": {"S": "p"}, ":a": {"S": "a"}, ":b": {"S": "b"}},
    }

    # When an item's sort key is tested
    # Then it is accepted exactly when DynamoDB would evaluate it
    assert KeyCondition.parse(params, "pk").accepts({"sk": {"S": sort_key}}) is accepted


def test_an_unknown_key_condition_is_refused_rather_than_guessed() -> None:
    # Given a key condition this module does not understand
    params = {"KeyConditionExpression": "pk = :p OR sk = :p", "ExpressionAttributeValues": {":p": {"S": "p"}}}

    # When it is parsed
    # Then it is refused
    with pytest.raises(ValueError, match="unsupported key condition"):
        KeyCondition.parse(params, "pk")


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
    """A client on a moto table with a KEYS_ONLY index on `status`, and a meter that names paths by the
    sort-key prefix."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-central-1")
        client.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "status")
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "ByStatus",
                    "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )
        meter = CapacityMeter(classify=lambda pk, sk: sk.split("#")[0])
        meter.attach(client)
        yield client, meter


def _write_units(meter: CapacityMeter) -> dict[str, float]:
    return dict(meter.stats()["writeUnits"])


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

    # Given an item in the index under status "new"
    client.put_item(TableName=TABLE, Item={"pk": {"S": "s"}, "sk": {"S": "lead#1"}, "status": {"S": "new"}})
    before = _write_units(meter)["PutItem"]
    assert before == 5.0 + 100 + 1 + 1  # the table item and its index entry

    # When an update moves it to status "won"
    client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "s"}, "sk": {"S": "lead#1"}},
        UpdateExpression="SET #status = :won",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":won": {"S": "won"}},
    )
    # Then the index entry is deleted and put again: 2 WRU on the index beside the table's 1
    assert _write_units(meter)["UpdateItem"] == 3.0
    assert meter.stats()["byPath"][INDEX_PATH]["writeUnits"] == 1.0 + 2.0
    assert "unmeteredCalls" not in meter.stats()


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
