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
                self._make_room(now)
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0

    def refund(self, client: str) -> None:
        """Give back one request (it turned out to be one that should not count)."""
        with self._lock:
            if client in self._buckets:
                tokens, last = self._buckets[client]
                self._buckets[client] = (min(self.burst, tokens + 1.0), last)

    def _make_room(self, now: float) -> None:
        """Bounded memory. Buckets that have refilled are the same as absent ones, so they go
        first; only if every client is still limited is everything forgiven (never refused):
        churning through new client keys buys an attacker nothing while buckets refill."""
        full = [c for c, (tokens, last) in self._buckets.items()
                if tokens + max(0.0, now - last) * self.rate >= self.burst]
        for c in full:
            del self._buckets[c]
        if len(self._buckets) >= self.max_clients:
            self._buckets.clear()
