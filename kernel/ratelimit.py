"""Token buckets keyed by a client (a source address, a node name, a token subject)."""

from __future__ import annotations

import threading


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float, max_clients: int = 100_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: float) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            # A clock stepped back must not drain the bucket (a lock-out until time caught up).
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / self.rate
            if len(self._buckets) >= self.max_clients and client not in self._buckets:
                self._buckets.clear()  # bounded memory; a reset only forgives, never refuses
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
