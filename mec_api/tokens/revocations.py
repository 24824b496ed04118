"""Revocations: the SQL store (token service side) and the in-memory list (resource servers).

Two kinds of entry, both delivered through one feed ordered by ``seq``:

* ``token``: one access token, by ``jti`` (RFC 7009 revocation, or an operator);
* ``node``: every token minted for workloads on ``node`` in trust epoch ``node_epoch`` or an
  earlier one; written when attestation says the node's trust period ended (it left
  ``trusted``, was removed or renamed: each increments the node's epoch in the same
  transaction). Tokens carry the epoch they were minted in (claim ``node_epoch``; a token
  without one counts as epoch 0, revoked by any node entry: fail closed). No clock is
  compared, so a step of any clock neither saves a token nor refuses a new one; time is used
  only for expiry (``exp``, and when an entry can no longer match a valid token).

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

CUTOFF_MARGIN_SECONDS = 1.0  # the time cutoff still written for versions before 0008


def token_epoch(claims: dict[str, Any]) -> int:
    """The trust epoch a token was minted in; 0 when absent or malformed (fail closed)."""
    value = claims.get("node_epoch")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class Revocation:
    seq: int
    kind: str
    jti: str | None
    node: str | None
    node_epoch: int | None      # node: tokens of this epoch or earlier are revoked
    expires_at: float           # POSIX seconds

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "jti": self.jti, "node": self.node,
                "node_epoch": self.node_epoch, "expires_at": self.expires_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Revocation:
        kind = d.get("kind")
        if kind not in ("token", "node") or not isinstance(d.get("seq"), int):
            raise ValueError(f"not a revocation entry: {str(d)[:200]}")
        epoch = d.get("node_epoch")
        if kind == "node" and not (isinstance(epoch, int) and not isinstance(epoch, bool)):
            epoch = 0  # a feed from before trust epochs: revokes what tokens without one are
        return cls(seq=d["seq"], kind=kind, jti=d.get("jti"), node=d.get("node"),
                   node_epoch=epoch if kind == "node" else None,
                   expires_at=float(d["expires_at"]))


def _row(r: RevocationRow) -> Revocation:
    epoch = (r.node_epoch or 0) if r.kind == "node" else None
    return Revocation(r.seq, r.kind, r.jti, r.node, epoch, r.expires_at.timestamp())


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

    def revoke_node(self, node: str, reason: str, now: datetime, *, through_epoch: int) -> None:
        """Revoke every token minted for ``node`` in trust epoch ``through_epoch`` or before.
        ``now`` only dates the entry and bounds its life (no token it matches outlives it)."""
        cutoff = now.timestamp() + CUTOFF_MARGIN_SECONDS
        self._add(RevocationRow(
            kind="node", node=node, node_epoch=through_epoch, cutoff=cutoff,
            reason=reason[:200], created_at=now,
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
        self._nodes: dict[str, tuple[int, float]] = {}  # node → (revoked epoch, expires_at)
        self._lock = threading.Lock()

    def apply(self, seq: int, entries: Iterable[Revocation]) -> None:
        with self._lock:
            for e in entries:
                if e.kind == "token" and e.jti:
                    self._jtis[e.jti] = max(e.expires_at, self._jtis.get(e.jti, 0.0))
                elif e.kind == "node" and e.node and e.node_epoch is not None:
                    old = self._nodes.get(e.node, (e.node_epoch, e.expires_at))
                    # Epochs only grow: the highest revoked one covers all lower ones.
                    self._nodes[e.node] = (max(old[0], e.node_epoch),
                                           max(old[1], e.expires_at))
            self.seq = max(self.seq, seq)

    def revoked(self, *, jti: str, node: str | None, node_epoch: int,
                now: float) -> str | None:
        """Why the token (minted for ``node`` in trust epoch ``node_epoch``) is revoked, or
        None."""
        exp = self._jtis.get(jti)
        if exp is not None and exp > now:
            return "the token was revoked"
        if node is not None:
            entry = self._nodes.get(node)
            if entry is not None and node_epoch <= entry[0] and entry[1] > now:
                return f"node {node} is no longer trusted (trust epoch {node_epoch} ended)"
        return None

    def revoked_epoch(self, node: str, now: float) -> int | None:
        """The highest revoked trust epoch of ``node`` (the issuer never mints at or below it)."""
        entry = self._nodes.get(node)
        return entry[0] if entry is not None and entry[1] > now else None

    def expire(self, now: float) -> None:
        with self._lock:
            self._jtis = {j: e for j, e in self._jtis.items() if e > now}
            self._nodes = {n: v for n, v in self._nodes.items() if v[1] > now}
