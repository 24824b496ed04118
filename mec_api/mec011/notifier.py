"""Callback notifications (MEC 011 subscriptions): POSTed in the background, never in a request.

``submit`` returns at once; each notification gets a bounded number of attempts with backoff,
a per-attempt timeout, and at most ``max_in_flight`` deliveries run at the same time (more are
dropped and counted: a slow subscriber must not grow the server's memory without bound).
Redirects are not followed: a callback is delivered to the URI the app registered, nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("mec_api.mec011.notify")


@dataclass(frozen=True)
class NotifierConfig:
    attempts: int = 3
    timeout_s: float = 2.0
    backoff_s: float = 0.2
    max_in_flight: int = 256


class CallbackNotifier:
    def __init__(self, config: NotifierConfig | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        self.config = config or NotifierConfig()
        self._client = client
        self._tasks: set[asyncio.Task[None]] = set()
        # delivered / failed / dropped: visible to tests and metrics.
        self.outcomes: Counter[str] = Counter()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout_s,
                                             follow_redirects=False)
        return self._client

    def submit(self, url: str, body: dict[str, Any]) -> None:
        """Queue one POST of ``body`` to ``url`` on the running event loop."""
        if len(self._tasks) >= self.config.max_in_flight:
            self.outcomes["dropped"] += 1
            log.warning("notification to %s dropped: %d deliveries in flight", url,
                        len(self._tasks))
            return
        task = asyncio.get_running_loop().create_task(self._deliver(url, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        for attempt in range(1, self.config.attempts + 1):
            try:
                response = await self._http().post(url, json=body,
                                                   timeout=self.config.timeout_s)
                if response.status_code < 300:
                    self.outcomes["delivered"] += 1
                    return
                # A 4xx other than 408/429 will not get better by retrying.
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            log.info("notification to %s failed (attempt %d/%d): %s", url, attempt,
                     self.config.attempts, reason)
            if attempt < self.config.attempts:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
        self.outcomes["failed"] += 1
        log.warning("notification to %s given up", url)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the deliveries in flight (tests, graceful shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
