"""DynamoDB capacity units as AWS bills them on on-demand tables, computed from item sizes.

Counting requests (`metering.aws.DynamoDBRequests`) says how often the functions call DynamoDB; the bill
depends on how large the items are. Every call is charged the units AWS would, from the item images read in
embedded moto's backend before and after it (never by a request), each unit to a *path*: the item family its
key names (`metering.store.keys.family`), or `count` for the items a `Select=COUNT` Query reads.

The rules, from the DynamoDB Developer Guide:

- item size ("Item sizes and formats"): the sum of attribute names and values; strings and binaries by their
  UTF-8/raw bytes; a number is about 1 byte per two significant digits plus 1 byte (leading and trailing
  zeros trimmed); booleans and nulls 1 byte; a list or map 3 bytes plus 1 byte per element plus its elements
  (map entries with their names).
- writes ("Capacity unit consumption for writes"): 1 unit per started KB of the larger of the item before
  and after a PutItem or UpdateItem; a DeleteItem by the deleted item; BatchWriteItem entry by entry; a
  write whose condition fails still consumes units, by the larger of the existing and the new item (1 unit
  when neither exists; a failed UpdateItem by the existing item: the image it would have written is never
  built).
- reads ("Capacity unit consumption for reads"): GetItem and each BatchGetItem key 1 unit per started 4 KB
  of the whole item (a projection does not reduce it; a missing item still costs one unit); a Query the
  total size of the items evaluated (before any filter; a count reads them too) rounded up to 4 KB, one
  unit when it evaluates none; half of that when eventually consistent.

Only what the product issues is charged: those seven operations, a Query on the base table by its
KeyConditionExpression. Any other item operation (Scan, transactions, PartiQL, an index Query) is counted in
`unmeteredCalls`, never charged nothing in silence.
"""

from __future__ import annotations

import base64
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import partial
from threading import Lock
from typing import Any

from metering.store.keys import family

Item = Mapping[str, Mapping[str, Any]]
"""An item in DynamoDB JSON: attribute name -> {type: value}."""
Classifier = Callable[[str, str], str]
"""(table partition key, table sort key) -> the path that item's units are charged to."""

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
RRU_PER_WRU = 5
"""SPEC §6: write-unit equivalents count 1 WRU as 5 RRU."""
LIST_OR_MAP_OVERHEAD = 3
NESTED_ELEMENT_OVERHEAD = 1
COUNT_PATH = "count"
"""Path of the items a `Select=COUNT` Query evaluates: counting reads them all, whatever their family."""
MOTO_ACCOUNT = "123456789012"
CONDITION_FAILED = "ConditionalCheckFailedException"
READS = frozenset({"GetItem", "BatchGetItem", "Query"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"})
UNMETERED = frozenset(
    {"Scan", "TransactGetItems", "TransactWriteItems"}
    | {"ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction"}
)
"""Item operations counted in `unmeteredCalls`; table management calls consume no capacity and are ignored."""
UNIT_KINDS = ("writeUnits", "readUnits")


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
        case "SS" | "NS" | "BS":  # a set: its members' sizes
            return sum(value_size({kind[0]: member}) for member in content)
        case "N":
            return number_size(str(content))
        case "B":
            return _binary_size(content)
        case "BOOL" | "NULL":
            return 1
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
    return sum(len(name.encode()) + value_size(value) for name, value in (item or {}).items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, *, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


def write_unit_equivalents(write: float, read: float) -> float:
    """SPEC §6's cost figure: WRU + RRU / 5."""
    return write + read / RRU_PER_WRU


# ---- tables as moto holds them ----


def _key_text(value: Mapping[str, Any] | None) -> str:
    if not value:
        return ""
    ((kind, content),) = value.items()
    if kind == "B" and isinstance(content, bytes | bytearray):
        return base64.b64encode(content).decode()
    return str(content)


class MotoTables:
    """Embedded moto's DynamoDB backend, read in place through its own methods: no request, no change."""

    def __init__(self, region: str) -> None:
        from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - moto is a development dependency

        self._backend = dynamodb_backends[MOTO_ACCOUNT][region]

    def key_names(self, table_name: str) -> tuple[str, ...]:
        table = self._backend.get_table(table_name)
        return (table.hash_key_attr, table.range_key_attr) if table.range_key_attr else (table.hash_key_attr,)

    def key_of(self, table_name: str, item: Item) -> tuple[str, str]:
        """The item's partition and sort key values as text (the sort key "" when the table has none)."""
        names = self.key_names(table_name)
        return _key_text(item.get(names[0])), _key_text(item.get(names[1])) if len(names) > 1 else ""

    def image(self, table_name: str, key: Item) -> dict[str, Any] | None:
        """A copy of the stored item, looked up with `get`: moto's own `get_item` would add an empty
        partition to the table's defaultdict for a key it does not hold."""
        from moto.dynamodb.models.dynamo_type import DynamoType  # noqa: PLC0415

        table = self._backend.get_table(table_name)
        stored: Any = table.items.get(DynamoType(dict(key[table.hash_key_attr])))
        if stored is not None and table.range_key_attr:
            stored = stored.get(DynamoType(dict(key[table.range_key_attr])))
        return dict(stored.to_json()["Attributes"]) if stored is not None else None

    def query(self, params: Mapping[str, Any], scanned: int) -> tuple[tuple[str, str], list[dict[str, Any]]]:
        """What a base-table Query evaluated: the key its condition names (the partition value and the first
        sort-key operand, a prefix or a bound), and its first `scanned` candidates (its ScannedCount) as
        moto decides them: its own parser of KeyConditionExpression and its own query, in its order from
        the start key, without filter or projection."""
        from moto.dynamodb.parsing.key_condition_expression import parse_expression  # noqa: PLC0415

        if params.get("IndexName"):
            raise ValueError("an index Query is not metered")
        name = params["TableName"]
        hash_conditions, range_conditions, _ = parse_expression(
            params["KeyConditionExpression"],
            params.get("ExpressionAttributeValues", {}),
            params.get("ExpressionAttributeNames", {}),
            self._backend.get_schema(name, None),
        )
        partition = hash_conditions[0][1]
        _, comparison, operands = range_conditions[-1] if range_conditions else ("", None, [])
        queried = (_key_text(partition), _key_text(operands[0]) if operands else "")
        start: Any = params.get("ExclusiveStartKey")  # None on a first page, as moto's own handler passes it
        if not scanned:
            return queried, []
        items, _, _ = self._backend.query(
            name,
            partition,
            comparison,
            operands,
            scanned,
            start,
            params.get("ScanIndexForward", True),
            None,
            hash_key_conditions=hash_conditions,
            range_key_conditions=range_conditions,
        )
        return queried, [dict(item.to_json()["Attributes"]) for item in items]


# ---- what a write request asks for ----


@dataclass(slots=True)
class _Write:
    """One item a write request names: its key, the item a put proposes, and the image before the call."""

    table: str
    key: Item
    proposed: Item | None = None
    old: dict[str, Any] | None = None


def _batch_entry(request: Mapping[str, Any]) -> Item:
    """The item of a BatchWriteItem PutRequest, the key of a DeleteRequest."""
    entry: Item = (
        request["PutRequest"]["Item"] if "PutRequest" in request else request["DeleteRequest"]["Key"]
    )
    return entry


def _writes_requested(operation: str, params: Mapping[str, Any], moto: MotoTables) -> list[_Write]:
    def put(table: str, item: Item) -> _Write:
        key = {name: item[name] for name in moto.key_names(table) if name in item}
        return _Write(table, key, proposed=item)

    match operation:
        case "PutItem":
            return [put(params["TableName"], params["Item"])]
        case "BatchWriteItem":
            return [
                put(table, _batch_entry(request))
                if "PutRequest" in request
                else _Write(table, _batch_entry(request))
                for table, requests in params.get("RequestItems", {}).items()
                for request in requests
            ]
    return [_Write(params["TableName"], params["Key"])]  # UpdateItem, DeleteItem


# ---- the meter ----


class CapacityMeter:
    """Charges every DynamoDB call of the clients it is attached to, at botocore's `before-parameter-build`
    and `after-call` events (the second is emitted for failed calls too). A call it does not charge, or cannot
    size, is counted in `unmeteredCalls` and never fails: measuring must not change what it measures."""

    def __init__(self, classify: Classifier = family) -> None:
        self.classify = classify
        self.unmetered: defaultdict[str, int] = defaultdict(int)
        self.seconds = 0.0
        """Time spent in the meter's hooks, inside the measured calls."""
        self._by_operation = {kind: defaultdict[str, float](float) for kind in UNIT_KINDS}
        self._by_path = defaultdict[str, dict[str, float]](lambda: dict.fromkeys(UNIT_KINDS, 0.0))
        self._item_writes: dict[tuple[str, str, str], tuple[int, int]] = {}
        """(table, partition key, sort key) -> how many writes changed the item, and its largest size then."""
        self._tables: dict[str, MotoTables] = {}
        self._lock = Lock()
        self._context_key = f"capacity-meter-{id(self)}"

    def attach(self, client: Any) -> None:
        """Attach every client the measured code builds, whenever it builds one; twice changes nothing."""
        region = str(client.meta.region_name)
        for event, hook in (("before-parameter-build", self._before), ("after-call", self._after)):
            unique_id = f"{self._context_key}-{event}"
            client.meta.events.register(f"{event}.dynamodb", partial(hook, region), unique_id=unique_id)

    def stats(self) -> dict[str, Any]:
        """The `stats.capacity` object of `metering simulate`. SPEC §6 wants no item written more than once
        past 1 KB, where every further write costs a second unit: the largest such item, how many passed."""
        with self._lock:
            stats: dict[str, Any] = {
                kind: {
                    operation: round(units, 3) for operation, units in sorted(by_operation.items()) if units
                }
                for kind, by_operation in self._by_operation.items()
            }
            stats["byPath"] = {
                path: {kind: round(units, 3) for kind, units in by_kind.items()}
                for path, by_kind in sorted(self._by_path.items())
            }
            totals = (sum(by_operation.values()) for by_operation in self._by_operation.values())
            stats["writeUnitEquivalents"] = round(write_unit_equivalents(*totals), 3)
            repeated = {item: counts for item, counts in self._item_writes.items() if counts[0] > 1}
            stats["largestRepeatedlyWrittenItem"] = None
            if repeated:
                item, (writes, size) = max(repeated.items(), key=lambda entry: entry[1][1])
                path = self.classify(*item[1:])
                stats["largestRepeatedlyWrittenItem"] = {"bytes": size, "writes": writes, "path": path}
            over = [size for _, size in repeated.values() if size > WRITE_UNIT_BYTES]
            stats["repeatedlyWrittenItemsOver1KB"] = len(over)
            if self.unmetered:
                stats["unmeteredCalls"] = dict(sorted(self.unmetered.items()))
            return stats

    def _moto(self, region: str) -> MotoTables:
        if region not in self._tables:
            self._tables[region] = MotoTables(region)
        return self._tables[region]

    def _before(
        self, region: str, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        started = time.perf_counter()
        operation = model.name
        if operation in UNMETERED:
            self._unmetered(operation)
        elif operation in READS or operation in WRITES:
            try:
                moto = self._moto(region)
                writes = _writes_requested(operation, params, moto) if operation in WRITES else []
                for write in writes:
                    write.old = moto.image(write.table, write.key)
                context[self._context_key] = (params, writes)
            except Exception:  # the measured call goes on; the miss is reported
                self._unmetered(operation)
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
        pending: tuple[Mapping[str, Any], list[_Write]] | None = context.pop(self._context_key, None)
        if pending is not None:
            params, writes = pending
            error = "" if http_response.status_code < 300 else str(parsed.get("Error", {}).get("Code", ""))
            try:
                with self._lock:
                    moto = self._moto(region)
                    if model.name in WRITES:
                        self._charge_writes(model.name, writes, parsed, error, moto)
                    elif not error and model.name == "Query":
                        self._charge_query(params, parsed, moto)
                    elif not error:
                        self._charge_reads(model.name, params, parsed, moto)
            except Exception:  # the measured call goes on; the miss is reported
                self._unmetered(model.name)
        self._spent(started)

    def _unmetered(self, operation: str) -> None:
        with self._lock:
            self.unmetered[operation] += 1

    def _spent(self, started: float) -> None:
        with self._lock:
            self.seconds += time.perf_counter() - started

    def _charge(self, kind: str, operation: str, path: str, units: float) -> None:
        self._by_operation[kind][operation] += units
        self._by_path[path][kind] += units

    def _charge_writes(
        self, operation: str, writes: list[_Write], parsed: Mapping[str, Any], error: str, moto: MotoTables
    ) -> None:
        if error and error != CONDITION_FAILED:
            return  # throttled, invalid or failed on the server: nothing consumed
        unprocessed = {
            (table, *moto.key_of(table, _batch_entry(request)))
            for table, requests in parsed.get("UnprocessedItems", {}).items()
            for request in requests
        }
        for write in writes:
            item = (write.table, *moto.key_of(write.table, write.key))
            if item in unprocessed:
                continue
            new = None if error else moto.image(write.table, write.key)
            size = max(item_size(write.old), item_size(write.proposed if error else new))
            self._charge("writeUnits", operation, self.classify(*item[1:]), float(write_units(size)))
            if new is not None:
                count, largest = self._item_writes.get(item, (0, 0))
                self._item_writes[item] = (count + 1, max(largest, size))

    def _charge_reads(
        self, operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any], moto: MotoTables
    ) -> None:
        requests: Mapping[str, Any] = params.get("RequestItems") or {  # BatchGetItem's, or GetItem as one
            params["TableName"]: {"Keys": [params["Key"]], "ConsistentRead": params.get("ConsistentRead")}
        }
        unprocessed = parsed.get("UnprocessedKeys", {})
        for table, request in requests.items():
            skipped = unprocessed.get(table, {}).get("Keys", [])
            consistent = bool(request.get("ConsistentRead"))
            for key in request.get("Keys", []):
                if key not in skipped:
                    size = item_size(moto.image(table, key))
                    path = self.classify(*moto.key_of(table, key))
                    self._charge("readUnits", operation, path, read_units(size, consistent=consistent))

    def _charge_query(self, params: Mapping[str, Any], parsed: Mapping[str, Any], moto: MotoTables) -> None:
        """The ScannedCount items evaluated from where the page started, their sizes summed and rounded up to
        4 KB once per request, the units split over the items' paths by size (all to `count` for a
        `Select=COUNT` request; to the queried key's path when none was evaluated)."""
        queried, evaluated = moto.query(params, int(parsed.get("ScannedCount", 0)))
        sizes = [item_size(item) for item in evaluated]
        total = sum(sizes)
        units = read_units(total, consistent=bool(params.get("ConsistentRead")))
        counting = params.get("Select") == "COUNT"
        if counting or not total:
            self._charge("readUnits", "Query", COUNT_PATH if counting else self.classify(*queried), units)
            return
        for item, size in zip(evaluated, sizes, strict=True):
            path = self.classify(*moto.key_of(params["TableName"], item))
            self._charge("readUnits", "Query", path, units * size / total)


_SHARED_METERS: dict[str, CapacityMeter] = {}
_SHARED_METERS_LOCK = Lock()


def shared_meter(name: str) -> CapacityMeter:
    """The meter registered under `name` in this process, so every client a replay builds (the functions'
    clients are rebuilt whenever another function's role runs) is attached to one tally the report reads."""
    with _SHARED_METERS_LOCK:
        if name not in _SHARED_METERS:
            _SHARED_METERS[name] = CapacityMeter()
        return _SHARED_METERS[name]
