"""Callback notifications (MEC 011 subscriptions): POSTed in the background, never in a request.

``submit`` returns at once; each notification gets a bounded number of attempts with backoff,
a per-attempt timeout, and at most ``max_in_flight`` deliveries run at the same time (more are
dropped and counted: a slow subscriber must not grow the server's memory without bound).
Redirects are not followed: a callback is delivered to the URI the app registered, nowhere else.

A callback URI is chosen by a tenant, so it must not turn the server into a proxy onto what
only the server can reach (server-side request forgery): before each delivery the host is
resolved and, if any of its addresses is in ``blocked_networks`` (loopback, link-local and
the cloud metadata address, unspecified, multicast by default), nothing is sent and the outcome
is ``refused``. Pod and service networks (private ranges) stay reachable: that is where tenant
apps receive their notifications. (A name that resolves differently between the check and the
connection is a residual risk; callbacks by IP literal avoid it.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("mec_api.mec011.notify")


DEFAULT_BLOCKED_NETWORKS = (
    "127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128",         # this host
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128",      # link-local, cloud metadata
    "100.100.100.200/32",                                    # Alibaba Cloud metadata
    "224.0.0.0/4", "ff00::/8", "255.255.255.255/32",         # multicast, broadcast
)


@dataclass(frozen=True)
class NotifierConfig:
    attempts: int = 3
    timeout_s: float = 2.0
    backoff_s: float = 0.2
    max_in_flight: int = 256
    blocked_networks: tuple[str, ...] = DEFAULT_BLOCKED_NETWORKS


async def blocked_address(url: str, blocked: tuple[str, ...]) -> str | None:
    """The first address of ``url``'s host inside ``blocked``, or None (unresolvable → itself)."""
    if not blocked:
        return None
    networks = [ipaddress.ip_network(n) for n in blocked]
    host = httpx.URL(url).host
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        return f"{host} (unresolvable)"
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if any(address in n for n in networks):
            return str(address)
    return None


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
        bad = await blocked_address(url, self.config.blocked_networks)
        if bad is not None:
            self.outcomes["refused"] += 1
            log.warning("notification to %s refused: %s is not a callback destination", url, bad)
            return
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
