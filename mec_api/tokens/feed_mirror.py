"""The revocation feed's answers: the whole live set, or the entries a follower lacks.

The server keeps a :class:`FeedMirror`: the live set as this process last read it, each entry
with the revocation generation it was written in. :meth:`FeedMirror.refresh` (run by the feed's
:class:`kernel.coalesce.CoalescedRead`, so it starts after the callers it serves asked) reads the
store's generation and then only the entries numbered after the mirror's (see
:mod:`mec_api.tokens.revocations`: numbers commit in order, so none is stepped over). A follower
names the generation it holds (``since``) and gets the entries numbered after it; without one,
or with one this database never reached (a restored backup), it gets the whole set. Any caller,
whatever it sends, costs one primary-key read plus the entries that are new: the public route
cannot be made to read the whole set in a loop.

The document: ``{"complete": true, "generation": G, "stamp": T, "since": S | null,
"entries": [...]}``; ``since`` null means ``entries`` is the whole live set. ``stamp`` is number
G's (each entry carries its predecessor's, ``prev_stamp``): the follower continues from what it
holds only when the stamps show the same history, else it asks for the whole set (a restored
database that numbered new entries up to or past what the follower holds). ``complete`` says
the follower may treat the answer as covering every live entry numbered up to ``G`` (with what
it held at ``S``).
``generation`` null (the store has no generation row) means: always the whole set.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from mec_api.tokens.revocations import Generation, Revocation, RevocationStore, kept_after


@dataclass(frozen=True)
class FeedView:
    generation: int | None
    entries: tuple[Revocation, ...]
    stamp: int | None = None  # the stamp of ``generation``


class FeedMirror:
    """The live revocation set of the store, as of the last :meth:`refresh`."""

    def __init__(self, store: RevocationStore, clock: Callable[[], datetime]) -> None:
        self.store, self.clock = store, clock
        self._entries: set[Revocation] = set()
        self._held: Generation | None = None
        self._lock = threading.Lock()
        self.whole_reads = 0

    def refresh(self) -> FeedView:
        """Read what was committed since the last refresh (in a thread; one at a time)."""
        with self._lock:
            now = self.clock()
            reading = self.store.read_after(self._held, now)
            if reading.whole:
                self._entries = set(reading.entries)
                self.whole_reads += 1
            else:
                self._entries.update(reading.entries)
            cutoff = kept_after(now).timestamp()
            self._entries = {e for e in self._entries if e.expires_at > cutoff}
            self._held = at = reading.position
            return FeedView(int(at) if at is not None else None, tuple(self._entries),
                            at.stamp if at is not None else None)


def answer(view: FeedView, since: int | None) -> bytes:
    """The whole set, or the entries numbered after ``since`` when the view reached it."""
    delta = since is not None and view.generation is not None and since <= view.generation
    entries: Iterable[Revocation] = (
        [e for e in view.entries if e.generation > since] if delta and since is not None
        else view.entries)
    return json.dumps({"complete": True, "generation": view.generation, "stamp": view.stamp,
                       "since": since if delta else None,
                       "entries": [e.as_dict() for e in sorted(entries, key=lambda e: e.seq)]},
                      separators=(",", ":")).encode()
