"""DynamoDB capacity units as AWS bills them on on-demand tables, computed from item sizes.

Counting requests (`metering.aws.DynamoDBRequests`) says how often the functions call DynamoDB; the bill
depends on how large the items are. This module sizes items by DynamoDB's rules and charges every call the
read and write request units AWS would, reading the item images straight from embedded moto's backend before
and after each call, so measuring never adds a request. Each unit is attributed to a *path*: the item family
its table key names (`metering.store.keys.family`, the one place that knows the key layout), `count` for the
items a `Select=COUNT` Query reads, and `index` for secondary-index entries. A meter may also be told which
function is running (`scope`), so a benchmark can say what recording, the close job and invoicing each cost.

The rules, from the DynamoDB Developer Guide:

- item size ("Item sizes and formats", CapacityUnitCalculations): the sum of attribute names and values;
  strings and binaries by their UTF-8/raw bytes; a number is about 1 byte per two significant digits plus
  1 byte (leading and trailing zeros trimmed); booleans and nulls 1 byte; a list or map 3 bytes plus 1 byte
  per element plus its elements (map entries with their names).
- writes ("Capacity unit consumption for writes", ProvisionedThroughput / read-write-operations): 1 unit
  per started KB of the larger of the item before and after a PutItem or UpdateItem; a DeleteItem by the
  deleted item; BatchWriteItem entry by entry; a write whose condition fails still consumes units, by the
  larger of the existing and the new item (1 unit when neither exists).
- transactions ("Capacity management for transactions"): two underlying reads or writes of every item, the
  capacity consumed even when the transaction is cancelled.
- secondary indexes (GSI.md, "Write Capacity Units"): a write that puts an entry into an index, removes one,
  or changes projected attributes costs 1 unit per started KB of the index entry; changing an index key
  costs a delete and a put. A KEYS_ONLY entry holds the index keys and the table keys.
- reads ("Capacity unit consumption for reads"): GetItem and each BatchGetItem key 1 unit per started 4 KB of
  the whole item (a projection does not reduce it; a missing item still costs one unit); Query and Scan the
  total size of the items evaluated (before any filter; a count reads them too) rounded up to 4 KB; half of
  that when eventually consistent. An empty Query or Scan is charged one unit.

Index entry writes of a transaction are counted once (the doubling is the table item's prepare and commit).
A failed UpdateItem is charged by the existing item: the image it would have written is never built.
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from threading import Lock
from typing import Any

from metering.store.keys import family

Item = Mapping[str, Mapping[str, Any]]
"""An item in DynamoDB JSON: attribute name -> {type: value}."""
Classifier = Callable[[str, str], str]
"""(table partition key, table sort key) -> the path that item's units are charged to."""
Scope = Callable[[], str]
"""What is running when a call is made (a function name, say); units are also summed by it."""

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
RRU_PER_WRU = 5
"""SPEC §6: write-unit equivalents count 1 WRU as 5 RRU."""
TRANSACTION_FACTOR = 2
LIST_OR_MAP_OVERHEAD = 3
NESTED_ELEMENT_OVERHEAD = 1
INDEX_PATH = "index"
"""Path of every unit spent on a secondary index (entries written, entries read)."""
COUNT_PATH = "count"
"""Path of the items a `Select=COUNT` Query evaluates: counting reads them all, whatever their family."""
KILOBYTE = 1024
MOTO_ACCOUNT = "123456789012"
CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELLED = "TransactionCanceledException"


# ---- item sizes ----


def number_size(text: str) -> int:
    """Bytes of a number: 1 per two significant digits (rounded up) plus 1."""
    try:
        digits = "".join(map(str, Decimal(text).as_tuple().digits)).strip("0")
    except InvalidOperation as exc:
        raise ValueError(f"not a DynamoDB number: {text!r}") from exc
    significant = max(1, len(digits))
    return (significant + 1) // 2 + 1


def _binary_size(value: bytes | bytearray | str) -> int:
    """Raw bytes of a binary value; the wire and moto carry it base64-encoded."""
    return len(value) if isinstance(value, bytes | bytearray) else len(base64.b64decode(value))


def value_size(value: Mapping[str, Any]) -> int:
    """Bytes of one attribute value in DynamoDB JSON, without its name."""
    ((kind, content),) = value.items()
    match kind:
        case "S":
            return len(str(content).encode())
        case "N":
            return number_size(str(content))
        case "B":
            return _binary_size(content)
        case "BOOL" | "NULL":
            return 1
        case "SS":
            return sum(len(str(member).encode()) for member in content)
        case "NS":
            return sum(number_size(str(member)) for member in content)
        case "BS":
            return sum(_binary_size(member) for member in content)
        case "L":
            return LIST_OR_MAP_OVERHEAD + sum(
                NESTED_ELEMENT_OVERHEAD + value_size(member) for member in content
            )
        case "M":
            return LIST_OR_MAP_OVERHEAD + sum(
                NESTED_ELEMENT_OVERHEAD + len(name.encode()) + value_size(member)
                for name, member in content.items()
            )
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: Item | None) -> int:
    """Bytes of an item: every attribute name plus its value (0 for no item)."""
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def write_units(size: int) -> int:
    """Write request units of one item write: 1 per started KB, at least 1."""
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, *, consistent: bool) -> float:
    """Read request units of one read of `size` bytes: 1 per started 4 KB (at least 1), half when
    eventually consistent."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


def write_unit_equivalents(write: float, read: float) -> float:
    """SPEC §6's cost figure: WRU + RRU / 5."""
    return write + read / RRU_PER_WRU


# ---- what one meter has counted ----


@dataclass(slots=True)
class _ItemWrites:
    path: str
    writes: int = 0
    largest: int = 0


@dataclass(slots=True)
class _Units:
    write: float = 0.0
    read: float = 0.0

    def as_stats(self) -> dict[str, float]:
        return {"writeUnits": round(self.write, 3), "readUnits": round(self.read, 3)}


@dataclass(slots=True)
class CapacityTally:
    """Units by operation, by path and by scope, and the writes of each item (to find items that grow)."""

    write_by_operation: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    read_by_operation: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    by_path: defaultdict[str, _Units] = field(default_factory=lambda: defaultdict(_Units))
    by_scope: defaultdict[str, defaultdict[str, _Units]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(_Units))
    )
    item_writes: dict[tuple[str, str, str], _ItemWrites] = field(default_factory=dict)

    def add_write(self, operation: str, path: str, units: float, scope: str = "") -> None:
        self.write_by_operation[operation] += units
        self.by_path[path].write += units
        if scope:
            self.by_scope[scope][path].write += units

    def add_read(self, operation: str, path: str, units: float, scope: str = "") -> None:
        self.read_by_operation[operation] += units
        self.by_path[path].read += units
        if scope:
            self.by_scope[scope][path].read += units

    def item_written(self, key: tuple[str, str, str], path: str, size: int) -> None:
        record = self.item_writes.get(key)
        if record is None:
            record = self.item_writes[key] = _ItemWrites(path)
        record.writes += 1
        record.largest = max(record.largest, size)

    def largest_repeated_write(self) -> dict[str, Any] | None:
        """The largest item among those written (created or changed) more than once: SPEC §6 wants none
        of them past 1 KB, where every further write costs a second unit."""
        repeated = [record for record in self.item_writes.values() if record.writes > 1]
        if not repeated:
            return None
        largest = max(repeated, key=lambda record: record.largest)
        return {"bytes": largest.largest, "writes": largest.writes, "path": largest.path}

    def repeated_writes_over(self, size: int) -> int:
        """How many items written more than once were larger than `size` bytes at some write."""
        return sum(1 for record in self.item_writes.values() if record.writes > 1 and record.largest > size)

    def as_stats(self) -> dict[str, Any]:
        """The `stats.capacity` object of `metering simulate`."""
        stats: dict[str, Any] = {
            "writeUnits": _rounded(self.write_by_operation),
            "readUnits": _rounded(self.read_by_operation),
            "byPath": {path: units.as_stats() for path, units in sorted(self.by_path.items())},
            "writeUnitEquivalents": round(
                write_unit_equivalents(
                    sum(self.write_by_operation.values()), sum(self.read_by_operation.values())
                ),
                3,
            ),
            "largestRepeatedlyWrittenItem": self.largest_repeated_write(),
            "repeatedlyWrittenItemsOver1KB": self.repeated_writes_over(KILOBYTE),
        }
        if self.by_scope:
            stats["byScope"] = {
                scope: {path: units.as_stats() for path, units in sorted(paths.items())}
                for scope, paths in sorted(self.by_scope.items())
            }
        return stats


def _rounded(units: Mapping[str, float]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in sorted(units.items()) if value}


# ---- tables as moto holds them ----


def _key_text(value: Mapping[str, Any] | None) -> str:
    if not value:
        return ""
    ((kind, content),) = value.items()
    if kind == "B" and isinstance(content, bytes | bytearray):
        return base64.b64encode(content).decode()
    return str(content)


def _sortable(value: Mapping[str, Any]) -> Any:
    """A key value as Python compares it the way DynamoDB orders keys (UTF-8 code points, numbers, bytes)."""
    ((kind, content),) = value.items()
    if kind == "N":
        return Decimal(str(content))
    if kind == "B":
        return content if isinstance(content, bytes) else base64.b64decode(content)
    return str(content)


@dataclass(frozen=True, slots=True)
class IndexSchema:
    name: str
    hash_key: str
    range_key: str | None
    projection: str
    non_key_attributes: tuple[str, ...]

    def entry(self, item: Item | None, table_keys: Sequence[str]) -> dict[str, Mapping[str, Any]] | None:
        """The index entry of an item, or None when the item lacks an index key (sparse index)."""
        if not item or self.hash_key not in item or (self.range_key and self.range_key not in item):
            return None
        if self.projection == "ALL":
            return dict(item)
        names = {self.hash_key, *table_keys, *((self.range_key,) if self.range_key else ())}
        if self.projection == "INCLUDE":
            names.update(self.non_key_attributes)
        return {name: item[name] for name in names if name in item}

    def key_of(self, entry: Mapping[str, Mapping[str, Any]]) -> tuple[Any, ...]:
        return tuple(entry.get(name) for name in (self.hash_key, self.range_key) if name)


@dataclass(frozen=True, slots=True)
class TableSchema:
    hash_key: str
    range_key: str | None
    indexes: tuple[IndexSchema, ...]

    @property
    def key_names(self) -> tuple[str, ...]:
        return (self.hash_key, self.range_key) if self.range_key else (self.hash_key,)

    def key_of(self, item: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
        return _key_text(item.get(self.hash_key)), _key_text(item.get(self.range_key or ""))

    def index(self, name: str) -> IndexSchema:
        return next(index for index in self.indexes if index.name == name)

    @staticmethod
    def from_description(description: Mapping[str, Any]) -> TableSchema:
        """From a DescribeTable `Table` object."""

        def keys(schema: Iterable[Mapping[str, str]]) -> tuple[str, str | None]:
            by_type = {element["KeyType"]: element["AttributeName"] for element in schema}
            return by_type["HASH"], by_type.get("RANGE")

        indexes = []
        for index in [
            *description.get("GlobalSecondaryIndexes", []),
            *description.get("LocalSecondaryIndexes", []),
        ]:
            hash_key, range_key = keys(index["KeySchema"])
            projection = index.get("Projection", {})
            indexes.append(
                IndexSchema(
                    index["IndexName"],
                    hash_key,
                    range_key,
                    projection.get("ProjectionType", "ALL"),
                    tuple(projection.get("NonKeyAttributes", ())),
                )
            )
        hash_key, range_key = keys(description["KeySchema"])
        return TableSchema(hash_key, range_key, tuple(indexes))


class MotoTables:
    """Item images of embedded moto's DynamoDB backend, read in place: no request, no side effect."""

    def __init__(self, account_id: str, region: str) -> None:
        from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - moto is a development dependency

        self._backend = dynamodb_backends[account_id][region]
        self._schemas: dict[str, TableSchema] = {}

    def schema(self, table_name: str) -> TableSchema:
        """Key schema and indexes, read once per table through the backend's DescribeTable."""
        schema = self._schemas.get(table_name)
        if schema is None:
            description = self._backend.describe_table(table_name)["Table"]
            schema = self._schemas[table_name] = TableSchema.from_description(description)
        return schema

    def image(self, table_name: str, key: Item) -> dict[str, Any] | None:
        """The stored item with this key, in DynamoDB JSON (a copy), or None."""
        from moto.dynamodb.models.dynamo_type import DynamoType  # noqa: PLC0415

        schema = self.schema(table_name)
        table = self._backend.get_table(table_name)
        partition = table.items.get(DynamoType(dict(key[schema.hash_key])))
        if partition is None:
            return None
        stored = partition.get(DynamoType(dict(key[schema.range_key]))) if schema.range_key else partition
        return _as_json(stored) if stored is not None else None

    def partition(self, table_name: str, hash_value: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of one table partition."""
        from moto.dynamodb.models.dynamo_type import DynamoType  # noqa: PLC0415

        schema = self.schema(table_name)
        stored = self._backend.get_table(table_name).items.get(DynamoType(dict(hash_value)))
        if stored is None:
            return []
        return [_as_json(item) for item in (stored.values() if schema.range_key else [stored])]

    def all_items(self, table_name: str, having: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item of the table (those carrying attribute `having`, when named)."""
        schema = self.schema(table_name)
        partitions: list[Any] = list(self._backend.get_table(table_name).items.values())
        for stored in partitions:
            for item in list(stored.values()) if schema.range_key else [stored]:
                if having is None or having in item.attrs:
                    yield _as_json(item)


_PARTITION_HINT = threading.local()


@contextlib.contextmanager
def moto_partition_queries() -> Iterator[None]:
    """Make embedded moto answer a base-table Query from the queried partition instead of sorting the whole
    table on every call (moto 5's `Table.query` builds its candidates from `all_items()`, which sorts every
    item of the table: a replay slows down with the square of the table's size, 40,000 events take minutes).
    Answers, `ScannedCount`, paging and conditions stay moto's own, item for item: only the candidate list
    is narrowed to the items that share the queried partition key, which is all a base-table Query can
    return. Index queries, scans and everything else are untouched. Restored on exit."""
    from moto.dynamodb.models.table import Table as MotoTable  # noqa: PLC0415 - moto is a development dependency

    original_query, original_all_items = MotoTable.query, MotoTable.all_items

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        if hash_key is None or kwargs.get("index_name") or (len(args) > 6 and args[6]):
            return original_query(self, hash_key, *args, **kwargs)
        _PARTITION_HINT.value = (self, hash_key)
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            _PARTITION_HINT.value = None

    def all_items(self: Any) -> Any:
        hint = getattr(_PARTITION_HINT, "value", None)
        if hint is None or hint[0] is not self:
            return original_all_items(self)
        stored = self.items.get(hint[1])
        if stored is None:
            return []
        return list(stored.values()) if self.range_key_attr else [stored]

    MotoTable.query, MotoTable.all_items = query, all_items  # type: ignore[method-assign]
    try:
        yield
    finally:
        MotoTable.query, MotoTable.all_items = original_query, original_all_items  # type: ignore[method-assign]


def _as_json(stored: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = stored.to_json()["Attributes"]
    return attributes


# ---- which items a Query or Scan evaluates ----

_BEGINS_WITH = re.compile(r"begins_with\s*\(\s*([#\w.-]+)\s*,\s*(:\w+)\s*\)", re.IGNORECASE)
_BETWEEN = re.compile(r"([#\w.-]+)\s+BETWEEN\s+(:\w+)\s+AND\s+(:\w+)", re.IGNORECASE)
_COMPARISON = re.compile(r"([#\w.-]+)\s*(<=|>=|=|<|>)\s*(:\w+)")
_CONNECTIVES = re.compile(r"^[\s()]*(AND[\s()]+)*[\s()]*$", re.IGNORECASE)
_LEGACY_OPERATORS = {"EQ": "=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">=", "BETWEEN": "BETWEEN"}


@dataclass(frozen=True, slots=True)
class KeyCondition:
    """A Query's key condition: the partition value and the optional condition on the sort key."""

    partition_value: Mapping[str, Any]
    sort_key: str | None = None
    operator: str | None = None
    operands: tuple[Mapping[str, Any], ...] = ()

    @property
    def partition_text(self) -> str:
        return _key_text(self.partition_value)

    @property
    def sort_hint(self) -> str:
        """The first sort-key operand (a prefix, a bound): what the queried items' sort keys look like."""
        return _key_text(self.operands[0]) if self.operands else ""

    def accepts(self, item: Mapping[str, Mapping[str, Any]]) -> bool:
        if self.sort_key is None or self.operator is None:
            return True
        if self.sort_key not in item:
            return False
        value = _sortable(item[self.sort_key])
        bounds = [_sortable(operand) for operand in self.operands]
        match self.operator:
            case "=":
                return bool(value == bounds[0])
            case "<":
                return bool(value < bounds[0])
            case "<=":
                return bool(value <= bounds[0])
            case ">":
                return bool(value > bounds[0])
            case ">=":
                return bool(value >= bounds[0])
            case "BETWEEN":
                return bool(bounds[0] <= value <= bounds[1])
            case "begins_with":
                return bool(value.startswith(bounds[0]))
        raise ValueError(f"unknown key condition operator {self.operator!r}")

    @staticmethod
    def parse(params: Mapping[str, Any], partition_key: str) -> KeyCondition:
        """From a Query's KeyConditionExpression (or legacy KeyConditions)."""
        if "KeyConditionExpression" not in params:
            return KeyCondition._from_legacy(params.get("KeyConditions", {}), partition_key)
        names: Mapping[str, str] = params.get("ExpressionAttributeNames", {})
        values: Mapping[str, Mapping[str, Any]] = params.get("ExpressionAttributeValues", {})
        text = str(params["KeyConditionExpression"])
        found: list[tuple[str, str, tuple[Mapping[str, Any], ...]]] = []
        for match in _BEGINS_WITH.finditer(text):
            found.append((names.get(match[1], match[1]), "begins_with", (values[match[2]],)))
        text = _BEGINS_WITH.sub(" ", text)
        for match in _BETWEEN.finditer(text):
            found.append((names.get(match[1], match[1]), "BETWEEN", (values[match[2]], values[match[3]])))
        text = _BETWEEN.sub(" ", text)
        for match in _COMPARISON.finditer(text):
            found.append((names.get(match[1], match[1]), match[2], (values[match[3]],)))
        if not _CONNECTIVES.match(_COMPARISON.sub(" ", text)):
            raise ValueError(f"unsupported key condition {params['KeyConditionExpression']!r}")
        return KeyCondition._from_parts(found, partition_key)

    @staticmethod
    def _from_legacy(conditions: Mapping[str, Any], partition_key: str) -> KeyCondition:
        found = [
            (
                name,
                "begins_with"
                if condition["ComparisonOperator"] == "BEGINS_WITH"
                else _LEGACY_OPERATORS[condition["ComparisonOperator"]],
                tuple(condition["AttributeValueList"]),
            )
            for name, condition in conditions.items()
        ]
        return KeyCondition._from_parts(found, partition_key)

    @staticmethod
    def _from_parts(
        found: Sequence[tuple[str, str, tuple[Mapping[str, Any], ...]]], partition_key: str
    ) -> KeyCondition:
        partition = [
            operands[0] for name, operator, operands in found if name == partition_key and operator == "="
        ]
        sort = [(name, operator, operands) for name, operator, operands in found if name != partition_key]
        if len(partition) != 1 or len(sort) > 1:
            raise ValueError(f"not a key condition on {partition_key}: {found!r}")
        if not sort:
            return KeyCondition(partition[0])
        name, operator, operands = sort[0]
        return KeyCondition(partition[0], name, operator, operands)


def _order(item: Mapping[str, Mapping[str, Any]], names: Sequence[str | None]) -> tuple[Any, ...]:
    return tuple(_sortable(item[name]) if name and name in item else "" for name in names)


def _after_start(
    items: list[dict[str, Any]], names: Sequence[str | None], start: Mapping[str, Any] | None, forward: bool
) -> list[dict[str, Any]]:
    """The items in key order (reversed when not `forward`) that follow an ExclusiveStartKey."""
    items.sort(key=lambda item: _order(item, names), reverse=not forward)
    if not start:
        return items
    boundary = _order(start, names)
    return [
        item
        for item in items
        if (_order(item, names) > boundary) == forward and _order(item, names) != boundary
    ]


def _query_candidates(
    moto: MotoTables, index: IndexSchema | None, condition: KeyCondition, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The entries a Query can evaluate, in the order it evaluates them; the first ScannedCount were."""
    table = params["TableName"]
    schema = moto.schema(table)
    forward = bool(params.get("ScanIndexForward", True))
    start = params.get("ExclusiveStartKey")
    if index is None:
        items = moto.partition(table, condition.partition_value)
        ordered = _after_start(items, [schema.range_key], start, forward)
        return [item for item in ordered if condition.accepts(item)]
    items = [
        item
        for item in moto.all_items(table, having=index.hash_key)
        if item[index.hash_key] == condition.partition_value
        and (not index.range_key or index.range_key in item)
    ]
    ordered = _after_start(items, [index.range_key, schema.hash_key, schema.range_key], start, forward)
    entries = (index.entry(item, schema.key_names) for item in ordered if condition.accepts(item))
    return [entry for entry in entries if entry is not None]


def _scan_candidates(
    moto: MotoTables, table: str, schema: TableSchema, index: IndexSchema | None, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The entries a Scan can evaluate, in key order after its start key (segments are not told apart)."""
    start = params.get("ExclusiveStartKey")
    if index is None:
        return _after_start(list(moto.all_items(table)), schema.key_names, start, True)
    names = [index.hash_key, index.range_key, schema.hash_key, schema.range_key]
    items = [
        item for item in moto.all_items(table, having=index.hash_key) if index.entry(item, schema.key_names)
    ]
    entries = (index.entry(item, schema.key_names) for item in _after_start(items, names, start, True))
    return [entry for entry in entries if entry is not None]


# ---- what a write request asks for ----


@dataclass(slots=True)
class _Write:
    """One item a write request names, with the image it had before the call."""

    table: str
    key: Item
    kind: str  # put, update, delete or check
    proposed: Item | None = None
    old: dict[str, Any] | None = None


def _writes_requested(
    operation: str, params: Mapping[str, Any], schema_of: Callable[[str], TableSchema]
) -> list[_Write]:
    def put(table: str, item: Item) -> _Write:
        key = {name: item[name] for name in schema_of(table).key_names if name in item}
        return _Write(table, key, "put", proposed=item)

    match operation:
        case "PutItem":
            return [put(params["TableName"], params["Item"])]
        case "UpdateItem":
            return [_Write(params["TableName"], params["Key"], "update")]
        case "DeleteItem":
            return [_Write(params["TableName"], params["Key"], "delete")]
        case "BatchWriteItem":
            return [
                put(table, request["PutRequest"]["Item"])
                if "PutRequest" in request
                else _Write(table, request["DeleteRequest"]["Key"], "delete")
                for table, requests in params.get("RequestItems", {}).items()
                for request in requests
            ]
        case "TransactWriteItems":
            writes = []
            for entry in params.get("TransactItems", []):
                ((action, request),) = entry.items()
                if action == "Put":
                    writes.append(put(request["TableName"], request["Item"]))
                else:
                    kind = {"Update": "update", "Delete": "delete", "ConditionCheck": "check"}[action]
                    writes.append(_Write(request["TableName"], request["Key"], kind))
            return writes
    return []


def index_write_units(
    index: IndexSchema, table_keys: Sequence[str], old: Item | None, new: Item | None
) -> int:
    """Units a table write spends on one secondary index: a put, a delete, both when an index key changes,
    an update when projected attributes change, nothing when the item is in the index neither before nor
    after or its entry is unchanged."""
    before, after = index.entry(old, table_keys), index.entry(new, table_keys)
    if before is None and after is None:
        return 0
    if before is None or after is None:
        return write_units(item_size(before or after))
    if index.key_of(before) != index.key_of(after):
        return write_units(item_size(before)) + write_units(item_size(after))
    if before != after:
        return write_units(max(item_size(before), item_size(after)))
    return 0


# ---- the meter ----


@dataclass(slots=True)
class _PendingCall:
    params: Mapping[str, Any]
    writes: list[_Write]
    scope: str


class CapacityMeter:
    """Charges every DynamoDB call of the clients it is attached to with the capacity units AWS would, from
    item images read in moto's backend before and after the call (botocore's `before-parameter-build` and
    `after-call` events; the second is emitted for failed calls too). A call the meter cannot size is counted
    in `unmeteredCalls` and never fails: measuring must not change what it measures.

    Paths are item families (`classify`, `metering.store.keys.family` unless told otherwise), `count` for a
    `Select=COUNT` Query and `index` for index entries; `scope`, when set, names what runs at each call (read
    in the calling thread when the call starts) and units are summed by it too (`byScope`)."""

    def __init__(
        self, classify: Classifier = family, account_id: str = MOTO_ACCOUNT, scope: Scope | None = None
    ) -> None:
        self.classify = classify
        self.account_id = account_id
        self.scope = scope
        self.tally = CapacityTally()
        self.unmetered: defaultdict[str, int] = defaultdict(int)
        self.seconds = 0.0
        """Time spent in the meter's hooks, inside the measured calls."""
        self._tables: dict[str, MotoTables] = {}
        self._lock = Lock()
        self._context_key = f"capacity-meter-{id(self)}"

    def attach(self, client: Any) -> None:
        """Meter a DynamoDB client. Attach every client the measured code builds, whenever it builds one;
        attaching the same client twice changes nothing."""
        region = str(client.meta.region_name)
        events = client.meta.events
        events.register(
            "before-parameter-build.dynamodb",
            partial(self._before, region),
            unique_id=f"{self._context_key}-before",
        )
        events.register(
            "after-call.dynamodb", partial(self._after, region), unique_id=f"{self._context_key}-after"
        )

    def stats(self) -> dict[str, Any]:
        """`writeUnits` and `readUnits` by operation, `byPath`, `writeUnitEquivalents` (WRU + RRU / 5), the
        largest item written more than once and how many such items passed 1 KB, `byScope` when a scope
        was set, and `unmeteredCalls` when there were any."""
        with self._lock:
            stats = self.tally.as_stats()
            if self.unmetered:
                stats["unmeteredCalls"] = dict(sorted(self.unmetered.items()))
            return stats

    def _moto(self, region: str) -> MotoTables:
        tables = self._tables.get(region)
        if tables is None:
            tables = self._tables[region] = MotoTables(self.account_id, region)
        return tables

    def _before(
        self, region: str, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        started = time.perf_counter()
        try:
            moto = self._moto(region)
            writes = _writes_requested(model.name, params, moto.schema)
            for write in writes:
                write.old = moto.image(write.table, write.key)
            scope = self.scope() if self.scope is not None else ""
            context[self._context_key] = _PendingCall(params, writes, scope)
        except Exception:  # the measured call goes on; the miss is reported
            self._unmetered(model.name)
        self._spent(started)

    def _after(
        self,
        region: str,
        model: Any,
        parsed: dict[str, Any],
        http_response: Any,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        started = time.perf_counter()
        pending: _PendingCall | None = context.pop(self._context_key, None)
        if pending is not None:
            error = "" if http_response.status_code < 300 else str(parsed.get("Error", {}).get("Code", ""))
            try:
                with self._lock:
                    if pending.writes:
                        self._charge_writes(model.name, pending, parsed, error, self._moto(region))
                    elif not error:
                        self._charge_reads(model.name, pending, parsed, self._moto(region))
            except Exception:  # the measured call goes on; the miss is reported
                self._unmetered(model.name)
        self._spent(started)

    def _unmetered(self, operation: str) -> None:
        with self._lock:
            self.unmetered[operation] += 1

    def _spent(self, started: float) -> None:
        with self._lock:
            self.seconds += time.perf_counter() - started

    # ---- writes ----

    def _charge_writes(
        self, operation: str, pending: _PendingCall, parsed: Mapping[str, Any], error: str, moto: MotoTables
    ) -> None:
        if error and error not in {CONDITION_FAILED, TRANSACTION_CANCELLED}:
            return  # throttled, invalid or failed on the server: nothing consumed
        factor = TRANSACTION_FACTOR if operation == "TransactWriteItems" else 1
        unprocessed = {
            (
                table,
                *moto.schema(table).key_of(
                    request.get("PutRequest", {}).get("Item") or request["DeleteRequest"]["Key"]
                ),
            )
            for table, requests in parsed.get("UnprocessedItems", {}).items()
            for request in requests
        }
        scope = pending.scope
        for write in pending.writes:
            schema = moto.schema(write.table)
            key = schema.key_of(write.key)
            if (write.table, *key) in unprocessed:
                continue
            path = self.classify(*key)
            applied = not error and write.kind != "check"
            new = moto.image(write.table, write.key) if applied else None
            size = max(item_size(write.old), item_size(new if applied else write.proposed))
            self.tally.add_write(operation, path, float(factor * write_units(size)), scope)
            if not applied:
                continue
            for index in schema.indexes:
                units = index_write_units(index, schema.key_names, write.old, new)
                if units:
                    self.tally.add_write(operation, INDEX_PATH, float(units), scope)
            if new is not None:
                self.tally.item_written((write.table, *key), path, size)

    # ---- reads ----

    def _charge_reads(
        self, operation: str, pending: _PendingCall, parsed: Mapping[str, Any], moto: MotoTables
    ) -> None:
        params, scope = pending.params, pending.scope
        match operation:
            case "GetItem":
                consistent = bool(params.get("ConsistentRead"))
                self._charge_item_read(
                    operation, moto, params["TableName"], params["Key"], scope, consistent=consistent
                )
            case "BatchGetItem":
                unprocessed = parsed.get("UnprocessedKeys", {})
                for table, request in params.get("RequestItems", {}).items():
                    skipped = unprocessed.get(table, {}).get("Keys", [])
                    for key in request.get("Keys", []):
                        if key not in skipped:
                            consistent = bool(request.get("ConsistentRead"))
                            self._charge_item_read(operation, moto, table, key, scope, consistent=consistent)
            case "TransactGetItems":
                for entry in params.get("TransactItems", []):
                    get = entry["Get"]
                    self._charge_item_read(
                        operation,
                        moto,
                        get["TableName"],
                        get["Key"],
                        scope,
                        consistent=True,
                        factor=TRANSACTION_FACTOR,
                    )
            case "Query" | "Scan":
                self._charge_evaluated(operation, params, parsed, moto, scope)

    def _charge_item_read(
        self,
        operation: str,
        moto: MotoTables,
        table: str,
        key: Item,
        scope: str,
        *,
        consistent: bool,
        factor: int = 1,
    ) -> None:
        size = item_size(moto.image(table, key))
        path = self.classify(*moto.schema(table).key_of(key))
        self.tally.add_read(operation, path, factor * read_units(size, consistent=consistent), scope)

    def _charge_evaluated(
        self,
        operation: str,
        params: Mapping[str, Any],
        parsed: Mapping[str, Any],
        moto: MotoTables,
        scope: str,
    ) -> None:
        """Query and Scan: the ScannedCount items evaluated from where the page started, their sizes summed
        and rounded up to 4 KB once per request, the units split over the items' paths by size (all to
        `count` for a `Select=COUNT` request, all to `index` for an index)."""
        table = params["TableName"]
        schema = moto.schema(table)
        index = schema.index(params["IndexName"]) if params.get("IndexName") else None
        if operation == "Query":
            condition = KeyCondition.parse(params, index.hash_key if index else schema.hash_key)
            candidates = _query_candidates(moto, index, condition, params)
            empty_path = INDEX_PATH if index else self.classify(condition.partition_text, condition.sort_hint)
        else:
            candidates = _scan_candidates(moto, table, schema, index, params)
            empty_path = INDEX_PATH if index else "scan"
        fixed_path = INDEX_PATH if index else COUNT_PATH if params.get("Select") == "COUNT" else None
        sizes = [item_size(entry) for entry in candidates[: int(parsed.get("ScannedCount", 0))]]
        total = sum(sizes)
        units = read_units(total, consistent=bool(params.get("ConsistentRead")))
        if fixed_path is not None or not total:
            self.tally.add_read(operation, fixed_path or empty_path, units, scope)
            return
        for entry, size in zip(candidates, sizes, strict=False):
            self.tally.add_read(operation, self.classify(*schema.key_of(entry)), units * size / total, scope)


_SHARED_METERS: dict[str, CapacityMeter] = {}
_SHARED_METERS_LOCK = Lock()


def shared_meter(name: str, classify: Classifier = family) -> CapacityMeter:
    """The meter registered under `name` in this process (created with `classify` on first use), so every
    client a replay builds (once per process today, once per invocation later) can be attached to the same
    tally and the report read it back: `shared_meter(table_name).attach(client)`."""
    with _SHARED_METERS_LOCK:
        meter = _SHARED_METERS.get(name)
        if meter is None:
            meter = _SHARED_METERS[name] = CapacityMeter(classify)
        return meter
