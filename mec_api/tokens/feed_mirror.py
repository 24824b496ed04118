"""The revocation feed's answers: the whole live set, or what a follower lacks of it.

Every answer is computed from a **whole-set read** (:meth:`RevocationStore.current`), never from
a position in the table. A follower that already holds an earlier answer names it (``base``, the
``tag`` of that answer); when this server still has that answer's set, it sends only the entries
of the current set that were not in it. The follower merges what it gets into what it holds
(entries are only ever added until they expire), so it ends up holding the whole current set
either way. A base this server does not know (a restart, another replica) gets the whole set.

Entries are compared by their whole content, not by ``seq``: SQLite reuses row numbers after
cleanup, so a new entry can carry the number of an old one the follower saw.

A read first takes the store's revocation generation (one primary-key read): when it is the one
taken before the latest whole-set read, nothing was revoked since, and that snapshot (same tag)
is still the whole set: a follower naming it gets an empty answer and no set is read
(:meth:`FeedSnapshots.read`). The set is read again anyway once the snapshot is
``REREAD_SECONDS`` old, so entries that expired leave the whole answer.

The document: ``{"complete": true, "tag": T, "base": B | null, "seq": S, "entries": [...]}``;
``base`` null means ``entries`` is the whole set. ``complete`` says the follower may treat the
answer as covering every live entry (with what it held at ``base``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mec_api.tokens.revocations import Revocation

KEEP_SNAPSHOTS = 8  # a follower asks about the last one or two
REREAD_SECONDS = 10.0  # an unchanged snapshot is read again after this (to drop expired entries)


@dataclass(frozen=True)
class FeedSnapshot:
    tag: str
    entries: frozenset[Revocation]
    generation: int | None = None  # the store's generation, read before the entries
    read_at: float = field(default_factory=time.monotonic)


def document(snapshot: FeedSnapshot, entries: Iterable[Revocation], base: str | None) -> bytes:
    listed = sorted(entries, key=lambda e: e.seq)
    return json.dumps({"complete": True, "tag": snapshot.tag, "base": base,
                       "seq": max((e.seq for e in snapshot.entries), default=0),
                       "entries": [e.as_dict() for e in listed]},
                      separators=(",", ":")).encode()


class FeedSnapshots:
    """The last few whole-set reads of this process, by tag."""

    def __init__(self, keep: int = KEEP_SNAPSHOTS) -> None:
        self.keep = keep
        self._prefix = uuid.uuid4().hex[:12]  # tags of another process are never ours
        self._counter = itertools.count(1)
        self._recent: OrderedDict[str, frozenset[Revocation]] = OrderedDict()
        self._lock = threading.Lock()

        self._latest: FeedSnapshot | None = None

    def add(self, entries: Iterable[Revocation], generation: int | None = None) -> FeedSnapshot:
        snapshot = FeedSnapshot(f"{self._prefix}-{next(self._counter)}", frozenset(entries),
                                generation)
        with self._lock:
            self._recent[snapshot.tag] = snapshot.entries
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
            self._latest = snapshot
        return snapshot

    def read(self, generation: Callable[[], int | None],
             current: Callable[[], Iterable[Revocation]]) -> FeedSnapshot:
        """A snapshot holding every entry committed before this call: the latest one when the
        generation (read first) did not move since it was taken, else a new whole-set read."""
        now_generation = generation()
        latest = self._latest
        if (latest is not None and now_generation is not None
                and latest.generation == now_generation
                and time.monotonic() - latest.read_at < REREAD_SECONDS):
            return latest
        return self.add(current(), now_generation)

    def answer(self, snapshot: FeedSnapshot, base: str | None) -> bytes:
        """The whole set, or only what ``base`` lacks when ``base`` is a set we still have."""
        with self._lock:
            held = self._recent.get(base) if base else None
        if held is None:
            return document(snapshot, snapshot.entries, None)
        return document(snapshot, snapshot.entries - held, base)
