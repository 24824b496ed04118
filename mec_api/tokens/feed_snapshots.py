"""The revocation feed's answers: the whole live set, or what a follower lacks of it.

Every answer is computed from a **whole-set read** (:meth:`RevocationStore.current`), never from
a position in the table. A follower that already holds an earlier answer names it (``base``, the
``tag`` of that answer); when this server still has that answer's set, it sends only the entries
of the current set that were not in it. The follower merges what it gets into what it holds
(entries are only ever added until they expire), so it ends up holding the whole current set
either way. A base this server does not know (a restart, another replica) gets the whole set.

Entries are compared by their whole content, not by ``seq``: SQLite reuses row numbers after
cleanup, so a new entry can carry the number of an old one the follower saw.

The document: ``{"complete": true, "tag": T, "base": B | null, "seq": S, "entries": [...]}``;
``base`` null means ``entries`` is the whole set. ``complete`` says the follower may treat the
answer as covering every live entry (with what it held at ``base``).
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from mec_api.tokens.revocations import Revocation

KEEP_SNAPSHOTS = 8  # 2 s of reads at 4 a second: a follower asks about the last one or two


@dataclass(frozen=True)
class FeedSnapshot:
    tag: str
    entries: frozenset[Revocation]


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

    def add(self, entries: Iterable[Revocation]) -> FeedSnapshot:
        snapshot = FeedSnapshot(f"{self._prefix}-{next(self._counter)}", frozenset(entries))
        with self._lock:
            self._recent[snapshot.tag] = snapshot.entries
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
        return snapshot

    def answer(self, snapshot: FeedSnapshot, base: str | None) -> bytes:
        """The whole set, or only what ``base`` lacks when ``base`` is a set we still have."""
        with self._lock:
            held = self._recent.get(base) if base else None
        if held is None:
            return document(snapshot, snapshot.entries, None)
        return document(snapshot, snapshot.entries - held, base)
