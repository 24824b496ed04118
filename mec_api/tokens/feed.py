"""Keeping resource servers current: the revocation follower and the JWKS sources.

:class:`RevocationFollower` reads the **whole** live revocation set every ``interval`` seconds
(from the SQL store only when its generation moved: :class:`StoreSource`),
or at once when poked (the token service in the same process pokes it after every revocation
it commits), and merges it into a :class:`RevocationList`. The source is either the SQL store
(APIs included in ``umec server``) or the token service's feed over HTTP (``umec api …`` on a
node). Entries are read by revocation generation, whose numbers commit in order, so none is
stepped over (see :mod:`mec_api.tokens.revocations`).

``applied_at`` is the monotonic time the last successful read **started**: every revocation
committed before that instant is in the list. The guard refuses tokens while it is older than
its ``max_feed_age``, so a revocation is enforced by every follower within ``max_feed_age`` of
its commit, or that follower refuses everything (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from keys import KeyRing
from mec_api.tokens.revocations import (
    WAKEUP_CHANNEL,
    Generation,
    Revocation,
    RevocationList,
    RevocationStore,
    continues,
)

log = logging.getLogger("umec.tokens.feed")
FetchRevocations = Callable[[], Awaitable[list[Revocation]]]
MAX_FEED_ENTRIES = 1_000_000  # a feed answer larger than this is refused, not half-applied


class FeedMalformed(ValueError):
    """The revocation feed's answer is not a revocation set (the follower keeps its list and
    the guard refuses tokens once the list is older than its limit)."""


class StoreSource:
    """The SQL store as a follower's source, read by revocation generation: the first read, or
    one after the history changed (a restored database: the number went back, or another
    stamp stands at a number), is the whole live set; after that only the entries numbered
    since the last read (none, one primary-key read, while nothing was revoked). A missing
    generation row (None) means a whole read every time."""

    def __init__(self, store: RevocationStore, clock: Callable[[], datetime]) -> None:
        self.store, self.clock = store, clock
        # every entry numbered up to this (in its history) is in what we returned
        self.held: Generation | None = None
        self.whole_reads = 0
        self.partial_reads = 0

    async def __call__(self) -> list[Revocation]:
        return await asyncio.to_thread(self.read)

    def read(self) -> list[Revocation]:
        held = self.held
        reading = self.store.read_after(held, self.clock())
        if reading.whole:
            self.whole_reads += 1
        elif reading.position != held:
            self.partial_reads += 1
        self.held = reading.position
        return reading.entries


def store_source(store: RevocationStore,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> StoreSource:
    """``clock``: the clock the store's entries were dated with (kernel.clock)."""
    return StoreSource(store, clock)


def parse_feed(body: Any) -> list[Revocation]:
    """The feed document ``{"complete": true, "entries": [...]}`` as entries; all or nothing."""
    if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
        raise FeedMalformed("the revocation feed answered no entry list")
    if body.get("complete") is not True:
        raise FeedMalformed("the revocation feed did not say its set is complete (a server "
                            "from before the whole-set feed: upgrade the token service)")
    entries = body["entries"]
    if len(entries) > MAX_FEED_ENTRIES:
        raise FeedMalformed(f"the revocation feed sent {len(entries)} entries")
    try:
        return [Revocation.from_dict(e) for e in entries]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise FeedMalformed(f"a revocation feed entry is malformed: {str(e)[:200]}") from None


class HttpFeed:
    """The token service's feed over HTTP. After a first whole answer it names the revocation
    generation it holds (``since``) and gets only the entries numbered after it; the follower
    merges them into what it holds, so it holds the whole live set either way
    (:mod:`mec_api.tokens.feed_mirror`). It takes such an answer only when the stamps show the
    history it holds continued (:func:`~mec_api.tokens.revocations.continues`); else it asks
    again for the whole set."""

    def __init__(self, feed_url: str, client: httpx.AsyncClient) -> None:
        self.feed_url, self.client = feed_url, client
        self.generation: int | None = None
        self.stamp: int | None = None  # the stamp of ``generation``

    async def __call__(self) -> list[Revocation]:
        # Without a stamp (a server from before 0011) nothing shows the history: the whole set.
        held = Generation(self.generation, self.stamp) \
            if self.generation is not None and self.stamp is not None else None
        self.generation = self.stamp = None  # unknown until this answer is applied
        body, entries = await self._get(held)
        at = _generation_of(body)
        if held is not None and body.get("since") is not None \
                and (at is None or not continues(held, at, entries)):
            # Numbers of another history (a restored database): what we hold says nothing.
            body, entries = await self._get(None)
            at = _generation_of(body)
        if at is not None:
            self.generation, self.stamp = int(at), at.stamp
        return entries

    async def _get(self, held: Generation | None) -> tuple[dict[str, Any], list[Revocation]]:
        sent = int(held) if held is not None else None
        r = await self.client.get(self.feed_url,
                                  params={"since": sent} if sent is not None else None)
        r.raise_for_status()
        body = r.json()
        entries = parse_feed(body)
        since = body.get("since")
        if since is not None and since != sent:
            raise FeedMalformed(f"the feed answered entries since {str(since)[:32]}, not since "
                                f"the generation this follower holds")
        return body, entries


def _generation_of(body: dict[str, Any]) -> Generation | None:
    generation, stamp = body.get("generation"), body.get("stamp")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        return None
    return Generation(generation, stamp if isinstance(stamp, int)
                    and not isinstance(stamp, bool) else None)


def http_source(feed_url: str, client: httpx.AsyncClient) -> FetchRevocations:
    return HttpFeed(feed_url, client)


class RevocationFollower:
    def __init__(self, fetch: FetchRevocations, target: RevocationList,
                 interval: float = 0.1, clock: Callable[[], float] = time.time) -> None:
        self.fetch = fetch
        self.clock = clock
        self.target = target
        self.interval = interval
        self.applied_at = float("-inf")       # monotonic; -inf until the first success
        self._wake: asyncio.Event | None = None
        self._applied: asyncio.Condition | None = None  # notified after every read
        self._loop: asyncio.AbstractEventLoop | None = None

    async def step(self) -> None:
        started = time.monotonic()  # the set read now holds every entry committed before this
        entries = await self.fetch()
        self.target.apply(entries)
        self.target.expire(self.clock())
        self.applied_at = max(self.applied_at, started)

    def poke(self) -> None:
        """Thread-safe: fetch now instead of at the next interval."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(wake.set)

    async def current_since(self, instant: float, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until a read that started at ``instant``
        (monotonic) or later is applied: every revocation committed before ``instant`` is then
        in the list. Concurrent callers share reads: at most one runs and the next one starts
        when it ends. False when no such read finished in time (or the follower is not
        running); the caller then falls back on the age of the last read."""
        if self.applied_at >= instant:
            return True
        applied, wake = self._applied, self._wake
        if applied is None or wake is None:
            return False
        wake.set()  # read now (or right after the read that is running)
        try:
            async with applied:
                await asyncio.wait_for(applied.wait_for(lambda: self.applied_at >= instant),
                                       timeout)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._applied = asyncio.Condition()
        while True:
            self._wake.clear()  # a poke from here on triggers another read
            try:
                await self.step()
            except Exception as e:  # the guard fails closed on a stale feed; keep trying
                log.warning("revocation feed: %s: %s", type(e).__name__, str(e)[:200])
            async with self._applied:
                self._applied.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)


class PostgresWakeups:
    """Listens on PostgreSQL for committed revocations (``NOTIFY``, see
    :func:`~mec_api.tokens.revocations.wake_followers`) and pokes the follower, so that every
    worker and replica reads the set within milliseconds of a commit rather than at its next
    poll. A thread with its own connection; it reconnects after an error. Losing a wake-up
    costs nothing but time: the poll still runs."""

    def __init__(self, dsn: str, poke: Callable[[], None],
                 channel: str = WAKEUP_CHANNEL) -> None:
        self.dsn, self.poke, self.channel = dsn, poke, channel
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="revocation-wakeups")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.poke()  # anything committed while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.received += 1
                            self.poke()
            except Exception as e:  # the database may be failing over: listen again soon
                log.warning("revocation wake-ups: %s: %s", type(e).__name__, str(e)[:200])
                self._stop.wait(1.0)


class RingJwks:
    """The token service's own key ring as a JWKS source (same process), rebuilt at most once
    a second (or on ``refresh``): rotation and retirement show within that second."""

    def __init__(self, ring: KeyRing, max_age: float = 1.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.ring = ring
        self.max_age = max_age
        self.clock = clock  # the clock the ring's rotations are dated with (the service's)
        self._cached: tuple[float, int, Mapping[str, Any]] | None = None

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        cached, now = self._cached, time.monotonic()
        if refresh or cached is None or now - cached[0] > self.max_age \
                or cached[1] != id(self.ring.active):
            cached = self._cached = (now, id(self.ring.active),
                                     self.ring.jwks(self.clock()))
        return cached[2]


class HttpJwks:
    """A JWKS fetched over HTTPS and cached for ``ttl`` seconds (refresh on demand)."""

    def __init__(self, url: str, *, ttl: float = 300.0, verify: bool | str = True,
                 bearer_token_file: Path | None = None, timeout: float = 3.0) -> None:
        self.url, self.ttl, self.timeout = url, ttl, timeout
        self.verify = verify
        self.bearer_token_file = bearer_token_file
        self._cached: tuple[float, Mapping[str, Any]] | None = None
        self._lock = threading.Lock()

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        with self._lock:
            if not refresh and self._cached and time.monotonic() - self._cached[0] < self.ttl:
                return self._cached[1]
            headers = {}
            if self.bearer_token_file is not None:  # in-cluster: the pod's own SA token
                headers["Authorization"] = \
                    f"Bearer {self.bearer_token_file.read_text().strip()}"
            try:
                r = httpx.get(self.url, headers=headers, timeout=self.timeout,
                              verify=self.verify)
                r.raise_for_status()
                doc = r.json()
                if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                    raise ValueError("not a JWKS")
            except (httpx.HTTPError, ValueError) as e:
                if self._cached is not None:  # keep the last good keys; the kid check decides
                    log.warning("JWKS %s: %s; using cached keys", self.url, e)
                    return self._cached[1]
                raise
            self._cached = (time.monotonic(), doc)
            return doc


def discover_jwks_url(issuer: str, *, verify: bool | str = True, timeout: float = 3.0) -> str:
    """OIDC discovery: ``{issuer}/.well-known/openid-configuration`` → ``jwks_uri``."""
    r = httpx.get(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=timeout,
                  verify=verify)
    r.raise_for_status()
    doc = r.json()
    if doc.get("issuer") != issuer or not isinstance(doc.get("jwks_uri"), str):
        raise ValueError(f"discovery document of {issuer} names issuer {doc.get('issuer')!r}")
    return str(doc["jwks_uri"])


class StaticJwks:
    """A JWKS from a file (``kubectl get --raw /openid/v1/jwks``), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: tuple[float, Mapping[str, Any]] | None = None

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        mtime = self.path.stat().st_mtime
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, json.loads(self.path.read_text()))
        return self._cached[1]
