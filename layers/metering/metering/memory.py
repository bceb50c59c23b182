"""What a container remembers between batches to save reads: only facts that never become false (a contact
active in a period stays active, a count only grows), in bounded sets that forget their oldest entries."""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class Remembered[K: Hashable]:
    """A bounded set of facts that stay true; when full it forgets the oldest tenth (and any overflow)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._keys: dict[K, None] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: K) -> None:
        self.add_all([key])

    def add_all(self, keys: Iterable[K]) -> None:
        for key in keys:
            self._keys[key] = None
        overflow = len(self._keys) - self._capacity
        if overflow > 0:
            for stale in list(self._keys)[: overflow + self._capacity // 10]:
                del self._keys[stale]
