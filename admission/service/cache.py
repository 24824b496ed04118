"""A TTL cache with single flight: one computation in flight per key, shared by every waiter.

Admission reviews for the pods of one Deployment arrive in bursts; without single flight each
would fetch the same manifest and signatures from the registry. Here the first caller starts
the computation as its own task; later callers for the same key await that task. Waiters are
shielded: a review that hits its deadline gives up waiting, but the fetch keeps running and
its result serves the next review. Failures are not cached (a registry that comes back is used
at once), but are shared with the waiters of the failed flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlightCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._values: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._flights: dict[K, asyncio.Task[V]] = {}
        self.hits = self.misses = self.joined = 0

    def peek(self, key: K) -> V | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._values[key]
            return None
        return entry[1]

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The cached value (``True``: a hit) or the result of the one flight for ``key``."""
        value = self.peek(key)
        if value is not None:
            self.hits += 1
            self._values.move_to_end(key)
            return value, True
        flight = self._flights.get(key)
        if flight is None:
            self.misses += 1
            flight = asyncio.ensure_future(self._fly(key, compute))
            self._flights[key] = flight
        else:
            self.joined += 1
        return await asyncio.shield(flight), False

    async def _fly(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await compute()
            self._values[key] = (self.clock() + self.ttl, value)
            self._values.move_to_end(key)
            while len(self._values) > self.max_entries:
                self._values.popitem(last=False)
            return value
        finally:
            self._flights.pop(key, None)

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)
