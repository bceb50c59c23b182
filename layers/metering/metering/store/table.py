"""The one place that calls DynamoDB: error mapping, the conditional-write primitive, batch reads and
writes that resubmit what was left unprocessed, paged queries, and the writer pool."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from metering import aws
from metering.aws import classify, error_code
from metering.errors import StoreUnavailable
from metering.retrying import CLOCK, backoff_delay
from metering.store.codec import Item
from metering.store.keys import Key, key_of

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_LIMIT = 100
BATCH_WRITE_LIMIT = 25
WRITE_THREADS = 8
STALLED_RESUBMISSIONS = 6
"""Resubmissions of a batch request in a row without progress before it gives up."""


class LeftUnprocessed(StoreUnavailable):
    """A batch request gave up: these entries were never processed (throttled keys, or a call that kept
    failing)."""

    def __init__(self, message: str, entries: list[Item]) -> None:
        super().__init__(message)
        self.entries = entries


@dataclass(frozen=True, slots=True)
class Written:
    """A conditional write that was applied; `item` is the item after it (when asked for)."""

    item: Item


@dataclass(frozen=True, slots=True)
class Conflict:
    """A conditional write whose condition failed; `item` is the item in the way (empty if there is none)."""

    item: Item


Outcome = Written | Conflict


class Table:
    """One DynamoDB table; domain code never sees this class, only the item-family stores built on it."""

    def __init__(
        self, name: str, client: DynamoDBClient | None = None, write_concurrency: int = WRITE_THREADS
    ) -> None:
        self.name = name
        self._client = client
        self._writers = ThreadPoolExecutor(max_workers=write_concurrency, thread_name_prefix="ddb-write")

    @property
    def client(self) -> DynamoDBClient:
        return self._client or aws.dynamodb()

    def call[T](self, operation: Callable[..., T], **kwargs: Any) -> T:
        """Run one API call; what goes wrong becomes `StoreUnavailable` (retry) or `ServiceMisconfigured`
        (a fault to surface). Failed conditions are not errors: callers of `write` get them as outcomes."""
        try:
            return operation(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, "dynamodb", _operation_name(operation), self.name) from exc

    def write(self, **request: Any) -> Outcome:
        """A conditional PutItem (`Item`) or UpdateItem (`Key`): applied, or in conflict with the item that
        stopped it (returned by the failed condition itself, so no read is needed)."""
        operation = self.client.put_item if "Item" in request else self.client.update_item
        try:
            response = operation(
                TableName=self.name, ReturnValuesOnConditionCheckFailure="ALL_OLD", **request
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                failure: dict[str, Any] = dict(exc.response)
                return Conflict(failure.get("Item", {}))
            raise classify(exc, "dynamodb", _operation_name(operation), self.name) from exc
        except BotoCoreError as exc:
            raise classify(exc, "dynamodb", _operation_name(operation), self.name) from exc
        answer: dict[str, Any] = dict(response)
        return Written(answer.get("Attributes", request.get("Item", {})))

    def create(self, item: Item) -> Outcome:
        """Put an item only if its key is new."""
        return self.write(Item=item, ConditionExpression="attribute_not_exists(pk)")

    def get(self, item_key: Key, *, consistent: bool = True) -> Item | None:
        response = self.call(
            self.client.get_item, TableName=self.name, Key=item_key, ConsistentRead=consistent
        )
        found: dict[str, Any] = dict(response)
        item: Item | None = found.get("Item")
        return item

    def batch_get(self, keys: Iterable[Key], *, consistent: bool = False) -> Iterator[Item]:
        """Every existing item among `keys`, in BatchGetItem calls of up to 100 keys."""
        unique = list({key_of(item_key): item_key for item_key in keys}.values())

        def get(pending: list[Item]) -> tuple[list[Item], list[Item]]:
            request = {self.name: {"Keys": pending, "ConsistentRead": consistent}}
            response: Item = dict(self.call(self.client.batch_get_item, RequestItems=request))
            left = response.get("UnprocessedKeys", {}).get(self.name, {}).get("Keys", [])
            return response.get("Responses", {}).get(self.name, []), left

        for offset in range(0, len(unique), BATCH_GET_LIMIT):
            for items in _until_processed(get, unique[offset : offset + BATCH_GET_LIMIT], "BatchGetItem"):
                yield from items

    def batch_get_settled(
        self, keys: Sequence[Key], *, consistent: bool = False
    ) -> tuple[list[Item], list[Key]]:
        """`batch_get` chunk by chunk: the items found, and the keys that could not be read (left
        unprocessed, or in a call that kept failing): a caller fails only what needed them."""
        found: list[Item] = []
        unread: list[Key] = []
        for offset in range(0, len(keys), BATCH_GET_LIMIT):
            try:
                for item in self.batch_get(keys[offset : offset + BATCH_GET_LIMIT], consistent=consistent):
                    found.append(item)
            except LeftUnprocessed as exc:
                unread += exc.entries
        return found, unread

    def batch_put(self, items: Iterable[Item]) -> None:
        """Unconditional puts (idempotent by key) in BatchWriteItem calls of up to 25 items."""
        unique = list({key_of(item): item for item in items}.values())

        def write(pending: list[Item]) -> tuple[None, list[Item]]:
            response: Item = dict(self.call(self.client.batch_write_item, RequestItems={self.name: pending}))
            return None, response.get("UnprocessedItems", {}).get(self.name, [])

        for offset in range(0, len(unique), BATCH_WRITE_LIMIT):
            requests = [
                {"PutRequest": {"Item": item}} for item in unique[offset : offset + BATCH_WRITE_LIMIT]
            ]
            for _ in _until_processed(write, requests, "BatchWriteItem"):
                pass

    def query(self, **request: Any) -> Iterator[Item]:
        """The pages of a Query, from `ExclusiveStartKey` if given."""
        start: Item | None = request.pop("ExclusiveStartKey", None)
        while True:
            page: Item = dict(
                self.call(
                    self.client.query,
                    TableName=self.name,
                    **request,
                    **({"ExclusiveStartKey": start} if start else {}),
                )
            )
            yield page
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def in_parallel[T, R](self, work: Callable[[T], R], inputs: Sequence[T]) -> list[R]:
        """Run independent single-item calls on the writer pool: their round trips overlap. A call that
        raises stops the others (none is still running when the error reaches the caller)."""
        futures = [self._writers.submit(work, value) for value in inputs]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
            wait(futures)

    def settle_in_parallel[T, R](
        self, work: Callable[[T], R], inputs: Sequence[T]
    ) -> list[R | StoreUnavailable]:
        """`in_parallel`, each input's result or the `StoreUnavailable` its call ended with."""

        def settled(value: T) -> R | StoreUnavailable:
            try:
                return work(value)
            except StoreUnavailable as exc:
                return exc

        return self.in_parallel(settled, inputs)


def _operation_name(operation: Callable[..., Any]) -> str:
    name = getattr(operation, "__name__", "call")
    return "".join(part.capitalize() for part in name.split("_"))


def _until_processed[Answer](
    submit: Callable[[list[Item]], tuple[Answer, list[Item]]], pending: list[Item], operation: str
) -> Iterator[Answer]:
    """Submit a batch request until every entry is processed, yielding each answer. Unprocessed entries,
    and calls that failed beyond botocore's retries, are resubmitted with backoff (batch reads and plain
    puts are idempotent); it gives up only after `STALLED_RESUBMISSIONS` tries in a row made no progress."""
    stalled = 0
    while True:
        failure: StoreUnavailable | None = None
        try:
            answer, left = submit(pending)
        except StoreUnavailable as exc:
            failure, left = exc, pending
        else:
            yield answer
            if not left:
                return
        stalled = 0 if len(left) < len(pending) else stalled + 1
        if stalled > STALLED_RESUBMISSIONS:
            reason = str(failure) if failure else f"{operation} left entries unprocessed"
            raise LeftUnprocessed(reason, left) from failure
        CLOCK.sleep(backoff_delay(stalled))
        pending = left
