"""What embedded moto needs to serve replays (`metering simulate`, the naive recorder, the benchmarks): fake
credentials, no endpoint variable left to send a client elsewhere, and `moto_partition_queries`."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"
FAKE_CREDENTIALS = dict.fromkeys(
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), "testing"
)


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) these variables for the block; restore the environment after it."""
    with mock.patch.dict(os.environ, {name: value for name, value in values.items() if value is not None}):
        for name in [name for name, value in values.items() if value is None]:
            os.environ.pop(name, None)
        yield


@contextlib.contextmanager
def embedded_aws(region: str) -> Iterator[None]:
    """moto's in-process AWS in `region`, every client on it (endpoint variables set for other runs are
    unset), its Query answered from the queried partition."""
    from moto import mock_aws  # noqa: PLC0415 - moto is a development dependency, only needed here

    endpoints = {name: None for name in os.environ if name.startswith(ENDPOINT_VARIABLE)}
    with (
        environment({**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": region, **endpoints}),
        mock_aws(),
        moto_partition_queries(),
    ):
        yield


_PARTITION_HINT = threading.local()


@contextlib.contextmanager
def moto_partition_queries() -> Iterator[None]:
    """Make embedded moto answer a base-table Query from the queried partition only: moto 5's `Table.query`
    sorts the whole table (`Table.all_items()`) on every call, so a replay slows down with the square of the
    table's size (40,000 events take minutes). Answers, `ScannedCount`, paging and conditions stay moto's own,
    item for item; index queries, scans and everything else are untouched. Restored on exit."""
    from moto.dynamodb.models.table import Table as MotoTable  # noqa: PLC0415 - moto is a development dependency

    original_query, original_all_items = MotoTable.query, MotoTable.all_items

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name") or (args[6] if len(args) > 6 else None)
        _PARTITION_HINT.value = (self, hash_key) if hash_key is not None and not index_name else None
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
