"""Revocations: the SQL store (token service side) and the in-memory list (resource servers).

Two kinds of entry, both delivered through one feed ordered by ``seq``:

* ``token``: one access token, by ``jti`` (RFC 7009 revocation, or an operator);
* ``node``: every token minted for workloads on ``node`` with ``iat`` < ``cutoff``; written
  when attestation says the node is no longer trusted. ``cutoff`` is the change time plus a
  small margin, because ``iat`` has whole-second resolution and a token minted in the same
  second as the failure must not survive it.

Resource servers apply the feed to a :class:`RevocationList` and check every request against
it; the feed (``GET /oauth2/revocations?after=<seq>``) and the in-process path give the same
entries. Entries expire when no token they match can still be valid.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from mec_api.tokens.models import RevocationRow

CUTOFF_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class Revocation:
    seq: int
    kind: str
    jti: str | None
    node: str | None
    cutoff: float | None
    expires_at: float           # POSIX seconds

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "jti": self.jti, "node": self.node,
                "cutoff": self.cutoff, "expires_at": self.expires_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Revocation:
        kind = d.get("kind")
        if kind not in ("token", "node") or not isinstance(d.get("seq"), int):
            raise ValueError(f"not a revocation entry: {str(d)[:200]}")
        return cls(seq=d["seq"], kind=kind, jti=d.get("jti"), node=d.get("node"),
                   cutoff=float(d["cutoff"]) if d.get("cutoff") is not None else None,
                   expires_at=float(d["expires_at"]))


def _row(r: RevocationRow) -> Revocation:
    return Revocation(r.seq, r.kind, r.jti, r.node, r.cutoff, r.expires_at.timestamp())


class RevocationStore:
    """The token service's revocations in SQL (shared by every ``umec server`` replica)."""

    def __init__(self, sessions: sessionmaker[Session], *, max_token_lifetime: float,
                 listeners: Iterable[Callable[[], None]] = ()) -> None:
        self.sessions = sessions
        self.max_token_lifetime = max_token_lifetime
        # Same-process resource servers are poked at once instead of waiting for their poll.
        self.listeners = list(listeners)

    def _add(self, row: RevocationRow) -> None:
        with self.sessions.begin() as session:
            session.add(row)
        for poke in self.listeners:
            poke()

    def revoke_token(self, jti: str, expires_at: float, reason: str, now: datetime) -> None:
        self._add(RevocationRow(kind="token", jti=jti[:64], reason=reason[:200],
                                created_at=now,
                                expires_at=datetime.fromtimestamp(expires_at, UTC)))

    def revoke_node(self, node: str, reason: str, now: datetime) -> None:
        cutoff = now.timestamp() + CUTOFF_MARGIN_SECONDS
        self._add(RevocationRow(
            kind="node", node=node, cutoff=cutoff, reason=reason[:200], created_at=now,
            expires_at=now + timedelta(seconds=CUTOFF_MARGIN_SECONDS + self.max_token_lifetime)))

    def changes(self, after: int, now: datetime,
                limit: int = 5000) -> tuple[int, list[Revocation]]:
        """Live entries with ``seq > after`` (oldest first) and the cursor to ask with next."""
        with self.sessions() as session:
            rows = session.scalars(
                select(RevocationRow).where(RevocationRow.seq > after,
                                            RevocationRow.expires_at > now)
                .order_by(RevocationRow.seq).limit(limit)).all()
            entries = [_row(r) for r in rows]
            if entries:
                return entries[-1].seq, entries
            latest = session.scalar(select(RevocationRow.seq).order_by(
                RevocationRow.seq.desc()).limit(1))
        return max(after, latest or 0), entries

    def prune(self, now: datetime) -> int:
        with self.sessions.begin() as session:
            result = session.execute(delete(RevocationRow).where(RevocationRow.expires_at <= now))
        return int(getattr(result, "rowcount", 0) or 0)


class RevocationList:
    """A resource server's view of the feed: O(1) checks per request, thread-safe."""

    def __init__(self) -> None:
        self.seq = 0
        self._jtis: dict[str, float] = {}
        self._nodes: dict[str, tuple[float, float]] = {}  # node → (cutoff, expires_at)
        self._lock = threading.Lock()

    def apply(self, seq: int, entries: Iterable[Revocation]) -> None:
        with self._lock:
            for e in entries:
                if e.kind == "token" and e.jti:
                    self._jtis[e.jti] = max(e.expires_at, self._jtis.get(e.jti, 0.0))
                elif e.kind == "node" and e.node and e.cutoff is not None:
                    old = self._nodes.get(e.node)
                    if old is None or e.cutoff > old[0]:
                        self._nodes[e.node] = (e.cutoff, e.expires_at)
            self.seq = max(self.seq, seq)

    def revoked(self, *, jti: str, node: str | None, iat: float, now: float) -> str | None:
        """Why the token is revoked, or None."""
        exp = self._jtis.get(jti)
        if exp is not None and exp > now:
            return "the token was revoked"
        if node is not None:
            entry = self._nodes.get(node)
            if entry is not None and iat < entry[0] and entry[1] > now:
                return f"node {node} is no longer trusted"
        return None

    def node_cutoff(self, node: str, now: float) -> float | None:
        """The live cutoff for ``node`` (the issuer refuses to mint below it)."""
        entry = self._nodes.get(node)
        return entry[0] if entry is not None and entry[1] > now else None

    def expire(self, now: float) -> None:
        with self._lock:
            self._jtis = {j: e for j, e in self._jtis.items() if e > now}
            self._nodes = {n: v for n, v in self._nodes.items() if v[1] > now}
