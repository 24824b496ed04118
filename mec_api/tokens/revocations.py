"""Revocations: the SQL store (token service side) and the in-memory list (resource servers).

Three kinds of entry:

* ``token``: one access token, by ``jti`` (RFC 7009 revocation, or an operator);
* ``node``: every token minted for workloads on ``node`` in trust epoch ``node_epoch`` or an
  earlier one. Written **in the transaction that ends the node's trust period** (it left
  ``trusted``, was removed or renamed: each increments the node's epoch in that same
  transaction; see :func:`write_node_revocation`), so the state change and its revocation
  commit together or not at all. Tokens carry the epoch they were minted in (claim
  ``node_epoch``; a token without one counts as epoch 0, revoked by any node entry: fail
  closed). No clock is compared, so a step of any clock neither saves a token nor refuses a
  new one;
* ``pod``: every token minted for the pod with UID ``pod_uid``; written in the transaction
  that deletes its admission record (the pod was deleted, or its record is gone).

**No cursor.** Resource servers read the whole live set (:meth:`RevocationStore.current`, one
statement: one snapshot) on every poll and merge it into their :class:`RevocationList`, which
only ever grows until an entry's expiry. A cursor over ``seq`` could step over an entry: a
PostgreSQL sequence number is taken before commit (commit order differs), SQLite reuses row
numbers after cleanup, and a "nothing new, jump to the newest" second query races with
commits. The set stays small: an entry lives only as long as a token it matches can
(``expires_at``), and entries are written only when a trust period ends, a pod goes or a holder
revokes. ``seq`` stays an identifier, never a position.

**The generation.** Every transaction that writes entries first takes the next number of the
one row of ``token_revocation_generation`` and stamps its entries with it
(:func:`next_generation`). Writers queue on that row's lock from the increment to their commit,
so the numbers commit in order: a reader that sees number N sees every entry numbered up to N,
and no entry numbered N or lower can appear later. This is what a ``seq`` cursor lacked (a
sequence number is taken outside that order), so a follower holding everything up to H reads
only the entries numbered in (H, N] (:meth:`RevocationStore.read_after`): one primary-key read when
nothing was revoked. A missing row makes writers fail (their transaction, and the state change
with it, rolls back) and readers read the whole set every time: fail closed either way.

**The stamp (migration 0011).** A number alone does not say which history it belongs to: after a
backup is restored at number G < H, new revocations are numbered G + 1, G + 2, … again, and
once they reach H before a follower reads, "nothing new" (or "only what is after H") steps over
them. So each writer also gives the row a fresh random ``stamp`` and writes the stamp it
replaced (that of number N − 1) on its entries as ``prev_stamp``. A follower holds the number
and the stamp it read (:class:`Generation`) and continues from them only when the row still has
that stamp (nothing new) or an entry numbered H + 1 names it (:func:`continues`); otherwise it
reads the whole set. An entry written without a stamp (a writer from before 0011, or
:func:`next_generation`'s callers) only costs a whole read.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from mec_api.tokens.models import RevocationGenerationRow, RevocationRow

CUTOFF_MARGIN_SECONDS = 1.0  # the time cutoff still written for versions before 0008
# No access token lives longer (the issuer refuses a longer configured lifetime). Writers outside
# the token service (the webhook's pod revocations) date their entries' expiry with this, so a
# lifetime configured differently in another process cannot make an entry die before its tokens.
MAX_TOKEN_LIFETIME_SECONDS = 300
# Resource servers accept a token up to this long after its ``exp`` (clock skew; the guard's and
# introspection's leeway). Every entry outlives the last instant a token it matches is accepted:
# an entry that expired with the token's ``exp`` let the revoked token work again for 5 s.
ACCEPTANCE_LEEWAY_SECONDS = 5.0
# How long a resource server holds an applied entry on its monotonic clock: a token an entry
# matches was minted before the entry was written, so it is accepted for no longer than this.
ENTRY_LOCAL_LIFE_SECONDS = (MAX_TOKEN_LIFETIME_SECONDS + ACCEPTANCE_LEEWAY_SECONDS
                            + CUTOFF_MARGIN_SECONDS)
# The store keeps (and serves) an entry this long past its ``expires_at``: a reader or pruner
# whose clock was stepped forward by up to this much and then corrected neither deletes nor
# omits an entry that still matches an accepted token. Larger forward steps are a documented
# residual risk (docs/decisions.md, "Revocation across clock steps").
CLOCK_STEP_ALLOWANCE_SECONDS = 3600.0
KINDS = ("token", "node", "pod")
_TABLE: Table = RevocationRow.__table__  # type: ignore[assignment]
_GENERATION: Table = RevocationGenerationRow.__table__  # type: ignore[assignment]


class RevocationGenerationMissing(RuntimeError):
    """The revocation generation row is missing: run ``umec db upgrade`` (migration 0010)."""


def token_epoch(claims: Mapping[str, Any]) -> int:
    """The trust epoch a token was minted in; 0 when absent or malformed (fail closed)."""
    value = claims.get("node_epoch")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def token_pod_uid(claims: Mapping[str, Any]) -> str | None:
    """The UID of the pod a token was minted for (claim ``pod.uid``), or None."""
    pod = claims.get("pod")
    uid = pod.get("uid") if isinstance(pod, dict) else None
    return uid if isinstance(uid, str) and uid else None


@dataclass(frozen=True)
class Revocation:
    seq: int
    kind: str
    jti: str | None
    node: str | None
    node_epoch: int | None      # node: tokens of this epoch or earlier are revoked
    expires_at: float           # POSIX seconds
    pod_uid: str | None = None  # pod: every token of this pod
    generation: int = 0         # the revocation generation it was written in (0: before 0010)
    prev_stamp: int | None = None  # the stamp of number generation - 1 (None: before 0011)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "jti": self.jti, "node": self.node,
                "node_epoch": self.node_epoch, "pod_uid": self.pod_uid,
                "expires_at": self.expires_at, "generation": self.generation,
                "prev_stamp": self.prev_stamp}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Revocation:
        kind = d.get("kind")
        if kind not in KINDS or not isinstance(d.get("seq"), int):
            raise ValueError(f"not a revocation entry: {str(d)[:200]}")
        epoch = d.get("node_epoch")
        if kind == "node" and not (isinstance(epoch, int) and not isinstance(epoch, bool)):
            epoch = 0  # a feed from before trust epochs: revokes what tokens without one are
        pod_uid = d.get("pod_uid")
        if kind == "pod" and not (isinstance(pod_uid, str) and pod_uid):
            raise ValueError(f"a pod revocation without a pod_uid: {str(d)[:200]}")
        generation, prev_stamp = d.get("generation"), d.get("prev_stamp")
        return cls(seq=d["seq"], kind=kind, jti=d.get("jti"), node=d.get("node"),
                   node_epoch=epoch if kind == "node" else None,
                   expires_at=float(d["expires_at"]),
                   pod_uid=pod_uid if kind == "pod" else None,
                   generation=generation if isinstance(generation, int)
                   and not isinstance(generation, bool) else 0,
                   prev_stamp=prev_stamp if _is_int(prev_stamp) else None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Generation(int):
    """A revocation generation as read (the number) with that number's ``stamp``. It compares
    as its number; whether two belong to one history is :func:`continues`' question."""

    stamp: int | None

    def __new__(cls, generation: int, stamp: int | None) -> Generation:
        value = super().__new__(cls, generation)
        value.stamp = stamp
        return value


@dataclass(frozen=True)
class Taken:
    """A writer's number and the stamp of the number before it (its entries' ``prev_stamp``)."""
    generation: int
    prev_stamp: int | None


@dataclass(frozen=True)
class Reading:
    position: Generation | None  # None: no generation row (read the whole set every time)
    entries: list[Revocation]
    whole: bool                 # the whole live set (else: the entries numbered after held)


def continues(held: Generation, now_at: Generation, entries: Iterable[Revocation]) -> bool:
    """Whether the history at ``now_at`` (with ``entries``, those numbered after ``held``)
    continues the one a reader held: the row still has its stamp, or the entry numbered next
    names it. False after a restore that reused the held number, and when it cannot tell."""
    if held.stamp is None:
        return False
    if int(now_at) == int(held):
        return now_at.stamp == held.stamp
    return any(e.generation == held + 1 and e.prev_stamp == held.stamp for e in entries)


def _row(r: Any) -> Revocation:
    epoch = (r.node_epoch or 0) if r.kind == "node" else None
    return Revocation(r.seq, r.kind, r.jti, r.node, epoch, r.expires_at.timestamp(),
                      r.pod_uid if r.kind == "pod" else None, r.generation or 0,
                      r.prev_stamp)


def kept_after(now: datetime) -> datetime:
    """The store keeps and serves the entries expiring after this: ``now`` less
    :data:`CLOCK_STEP_ALLOWANCE_SECONDS` (a clock stepped forward and corrected loses none)."""
    return now - timedelta(seconds=CLOCK_STEP_ALLOWANCE_SECONDS)


def _entry_life(now: datetime, max_token_lifetime: float) -> datetime:
    """An entry written at ``now`` matches no token that is still accepted after this."""
    return now + timedelta(seconds=CUTOFF_MARGIN_SECONDS + max_token_lifetime
                           + ACCEPTANCE_LEEWAY_SECONDS)


WAKEUP_CHANNEL = "umec_revocations"


def wake_followers(db: Session | Connection) -> None:
    """On PostgreSQL, ``NOTIFY`` every process's follower (delivered at commit, not before, and
    not at all on rollback): they read the set at once instead of at their next poll. A wake-up
    only shortens the wait; the poll and the guard's 1 s bound hold without it."""
    bind = db.get_bind() if isinstance(db, Session) else db
    if bind.dialect.name == "postgresql":
        db.execute(text(f"NOTIFY {WAKEUP_CHANNEL}"))


def take_generation(db: Session | Connection) -> Taken:
    """The first statement of a revocation write: take the next revocation generation (the
    row stays locked until the caller's transaction ends, so numbers commit in order), give
    the row a fresh stamp, and wake the followers at commit. The caller writes the stamp
    returned on its entries (``prev_stamp``). Raises :class:`RevocationGenerationMissing`,
    rolling the transaction back, when there is no row."""
    row = db.execute(update(_GENERATION).where(_GENERATION.c.id == 1)
                     .values(generation=_GENERATION.c.generation + 1)
                     .returning(_GENERATION.c.generation, _GENERATION.c.stamp)).first()
    if row is None:
        raise RevocationGenerationMissing(
            "the revocation generation row is missing: run `umec db upgrade`")
    db.execute(update(_GENERATION).where(_GENERATION.c.id == 1)
               .values(stamp=new_stamp()))
    wake_followers(db)
    return Taken(int(row.generation), row.stamp)


def new_stamp() -> int:
    """A random stamp (53 bits: exact in any JSON reader)."""
    return secrets.randbits(53)


def next_generation(db: Session | Connection) -> int:
    """:func:`take_generation`'s number alone: entries written with it carry no
    ``prev_stamp``, so a follower reaching them reads the whole set once (fail closed)."""
    return take_generation(db).generation


def write_node_revocation(db: Session | Connection, *, node: str, through_epoch: int,
                          reason: str, now: datetime, max_token_lifetime: float) -> None:
    """Revoke, inside the caller's transaction, every token minted for ``node`` in trust epoch
    ``through_epoch`` or before. The caller is the transaction that ends that epoch."""
    taken = take_generation(db)
    db.execute(insert(_TABLE).values(
        kind="node", node=node, node_epoch=through_epoch, generation=taken.generation,
        prev_stamp=taken.prev_stamp,
        cutoff=now.timestamp() + CUTOFF_MARGIN_SECONDS, reason=reason[:200], created_at=now,
        expires_at=_entry_life(now, max_token_lifetime)))


def node_revocations(db: Session | Connection, node: str,
                     limit: int = 50) -> list[dict[str, Any]]:
    """The node revocations still kept for ``node`` (entries live as long as a token they
    revoke could), newest first: what a node leaving trust cost (the operator's view)."""
    rows = db.execute(select(_TABLE.c.created_at, _TABLE.c.node_epoch, _TABLE.c.reason,
                             _TABLE.c.expires_at)
                      .where(_TABLE.c.kind == "node", _TABLE.c.node == node)
                      .order_by(_TABLE.c.seq.desc()).limit(limit))
    return [{"at": r.created_at.isoformat(), "through_epoch": r.node_epoch,
             "reason": r.reason, "kept_until": r.expires_at.isoformat()} for r in rows]


def write_pod_revocations(db: Session | Connection, *, pod_uids: Sequence[str], reason: str,
                          now: datetime, max_token_lifetime: float) -> None:
    """Revoke, inside the caller's transaction, every token of each pod in ``pod_uids``. The
    caller is the transaction that deletes those pods' admission records."""
    if pod_uids:
        taken = take_generation(db)
        db.execute(insert(_TABLE), [
            {"kind": "pod", "pod_uid": uid[:64], "reason": reason[:200], "created_at": now,
             "generation": taken.generation, "prev_stamp": taken.prev_stamp,
             "expires_at": _entry_life(now, max_token_lifetime)}
            for uid in pod_uids])


class RevocationStore:
    """The token service's revocations in SQL (shared by every ``umec server`` replica)."""

    def __init__(self, sessions: sessionmaker[Session], *, max_token_lifetime: float,
                 listeners: Iterable[Callable[[], None]] = ()) -> None:
        self.sessions = sessions
        self.max_token_lifetime = max_token_lifetime
        # Same-process resource servers are poked at once instead of waiting for their poll.
        self.listeners = list(listeners)

    def poke(self) -> None:
        """Tell this process's followers that a revocation just committed."""
        for poke in self.listeners:
            poke()

    def revoke_token(self, jti: str, expires_at: float, reason: str, now: datetime) -> None:
        """Revoke one token; ``expires_at`` is its ``exp``."""
        with self.sessions.begin() as session:
            # Kept while the token is still accepted: until its exp plus the leeway.
            last_accepted = expires_at + ACCEPTANCE_LEEWAY_SECONDS + CUTOFF_MARGIN_SECONDS
            taken = take_generation(session)
            session.add(RevocationRow(kind="token", jti=jti[:64], reason=reason[:200],
                                      created_at=now, generation=taken.generation,
                                      prev_stamp=taken.prev_stamp,
                                      expires_at=datetime.fromtimestamp(last_accepted, UTC)))
        self.poke()

    def revoke_node(self, node: str, reason: str, now: datetime, *, through_epoch: int) -> None:
        """Revoke every token minted for ``node`` in trust epoch ``through_epoch`` or before, in
        a transaction of its own (an operator's tool; state changes use
        :func:`write_node_revocation` in their own transaction)."""
        with self.sessions.begin() as session:
            write_node_revocation(session, node=node, through_epoch=through_epoch,
                                  reason=reason, now=now,
                                  max_token_lifetime=self.max_token_lifetime)
        self.poke()

    def matches(self, *, jti: str, node: str | None, node_epoch: int, pod_uid: str | None,
                now: datetime) -> bool:
        """Whether a live entry revokes this token: one indexed query (introspection and RFC
        7009 revocation ask about one token; the followers read the whole set)."""
        t = _TABLE
        match = (t.c.kind == "token") & (t.c.jti == jti[:64])
        if node is not None:
            match = match | ((t.c.kind == "node") & (t.c.node == node)
                             & (t.c.node_epoch >= node_epoch))
        if pod_uid is not None:
            match = match | ((t.c.kind == "pod") & (t.c.pod_uid == pod_uid[:64]))
        with self.sessions.kw["bind"].connect() as conn:
            found = conn.execute(select(t.c.seq).where(match, t.c.expires_at > now)
                                 .limit(1)).first()
        return found is not None

    def generation(self) -> Generation | None:
        """The revocation generation and its stamp (one primary-key read); None when the row
        is missing."""
        with self.sessions.kw["bind"].connect() as conn:
            row = conn.execute(select(_GENERATION.c.generation, _GENERATION.c.stamp)
                               .where(_GENERATION.c.id == 1)).first()
        return Generation(int(row.generation), row.stamp) if row is not None else None

    def read_after(self, held: Generation | None, now: datetime) -> Reading:
        """What a reader holding ``held`` lacks: nothing (one primary-key read) or the live
        entries numbered after it, when the database's history continues ``held``
        (:func:`continues`); else, or without a row, the whole live set."""
        position = self.generation()
        if position is not None and held is not None and position >= held:
            entries = self._continuing(held, position, now)
            if entries is not None:
                return Reading(position, entries, whole=False)
        return Reading(position, self.current(now), whole=True)

    def _continuing(self, held: Generation, position: Generation,
                    now: datetime) -> list[Revocation] | None:
        """The live entries numbered in (held, position], or None when that history does not
        continue ``held``. The entries numbered next are read even when expired: they carry
        the stamp that shows it."""
        entries: list[Revocation] = []
        if position > held:
            g = _TABLE.c.generation
            with self.sessions.kw["bind"].connect() as conn:
                rows = conn.execute(select(_TABLE).where(
                    g > int(held), g <= int(position),
                    (_TABLE.c.expires_at > kept_after(now)) | (g == int(held) + 1))
                    .order_by(g)).all()
            entries = [_row(r) for r in rows]
        if not continues(held, position, entries):
            return None
        return [e for e in entries if e.expires_at > kept_after(now).timestamp()]

    def current(self, now: datetime) -> list[Revocation]:
        """Every live entry, in one statement (one consistent snapshot)."""
        with self.sessions.kw["bind"].connect() as conn:
            rows = conn.execute(select(_TABLE).where(_TABLE.c.expires_at > kept_after(now))
                                .order_by(_TABLE.c.seq)).all()
        return [_row(r) for r in rows]

    def prune(self, now: datetime) -> int:
        with self.sessions.begin() as session:
            result = session.execute(delete(RevocationRow)
                                     .where(RevocationRow.expires_at <= kept_after(now)))
        return int(getattr(result, "rowcount", 0) or 0)


class RevocationList:
    """A resource server's view of the revocations: O(1) checks per request, thread-safe.

    :meth:`apply` merges a whole set read from the store or the feed: an entry once applied
    stays until :meth:`expire` drops it, whatever a later read says, so a token once refused here
    stays refused. An entry refuses while it is held, whatever the time (its tokens are expired
    anyway once it could be dropped).

    **Held across clock steps.** An entry is dropped only when its ``expires_at`` has passed on
    the wall clock *and* :data:`ENTRY_LOCAL_LIFE_SECONDS` have passed on this process's
    monotonic clock since it was first applied. A token it matches was minted before the entry
    was written, so it is accepted no longer than that after; the monotonic clock does not
    step. Dropping on the wall clock alone lost entries to a forward step longer than a token's
    lifetime: once the clock was corrected, the revoked tokens (their ``exp`` still ahead)
    were accepted again until they expired."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        # each value ends with (expires_at, held until on the monotonic clock)
        self._jtis: dict[str, tuple[float, float]] = {}
        self._nodes: dict[str, tuple[int, float, float]] = {}  # node → (revoked epoch, …)
        self._pods: dict[str, tuple[float, float]] = {}        # pod uid → …
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._jtis) + len(self._nodes) + len(self._pods)

    def apply(self, entries: Iterable[Revocation]) -> None:
        held = self.monotonic() + ENTRY_LOCAL_LIFE_SECONDS
        with self._lock:
            for e in entries:
                if e.kind == "token" and e.jti:
                    self._jtis[e.jti] = _later((e.expires_at, held), self._jtis.get(e.jti))
                elif e.kind == "pod" and e.pod_uid:
                    self._pods[e.pod_uid] = _later((e.expires_at, held),
                                                   self._pods.get(e.pod_uid))
                elif e.kind == "node" and e.node and e.node_epoch is not None:
                    old = self._nodes.get(e.node, (e.node_epoch, e.expires_at, held))
                    # Epochs only grow: the highest revoked one covers all lower ones.
                    self._nodes[e.node] = (max(old[0], e.node_epoch),
                                           max(old[1], e.expires_at), max(old[2], held))

    def revoked(self, *, jti: str, node: str | None, node_epoch: int, now: float,
                pod_uid: str | None = None) -> str | None:
        """Why the token (minted for ``node`` in trust epoch ``node_epoch``, for the pod
        ``pod_uid``) is revoked, or None. ``now`` is unused: an entry refuses while held."""
        if jti in self._jtis:
            return "the token was revoked"
        if pod_uid is not None and pod_uid in self._pods:
            return f"pod {pod_uid} was deleted (its admission record is gone)"
        if node is not None:
            entry = self._nodes.get(node)
            if entry is not None and node_epoch <= entry[0]:
                return f"node {node} is no longer trusted (trust epoch {node_epoch} ended)"
        return None

    def pod_revoked(self, pod_uid: str, now: float) -> bool:
        """Whether the pod's tokens are revoked (the issuer mints none for it either)."""
        return pod_uid in self._pods

    def revoked_epoch(self, node: str, now: float) -> int | None:
        """The highest revoked trust epoch of ``node`` (the issuer never mints at or below it)."""
        entry = self._nodes.get(node)
        return entry[0] if entry is not None else None

    def expire(self, now: float) -> None:
        """Drop the entries past their ``expires_at`` (wall clock, ``now``) and held for
        :data:`ENTRY_LOCAL_LIFE_SECONDS` (monotonic): both, so that no clock step drops one."""
        mono = self.monotonic()
        with self._lock:
            self._jtis = {j: v for j, v in self._jtis.items() if _kept(v, now, mono)}
            self._nodes = {n: v for n, v in self._nodes.items() if _kept(v[1:], now, mono)}
            self._pods = {u: v for u, v in self._pods.items() if _kept(v, now, mono)}


def _later(new: tuple[float, float], old: tuple[float, float] | None) -> tuple[float, float]:
    return new if old is None else (max(new[0], old[0]), max(new[1], old[1]))


def _kept(value: tuple[float, ...], now: float, mono: float) -> bool:
    expires_at, held_until = value[-2], value[-1]
    return expires_at > now or held_until > mono
