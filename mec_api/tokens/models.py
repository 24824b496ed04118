"""Tables of the token service: revocations, and how many tokens were issued per hour.

Issued access tokens are not stored: they are self-contained JWTs, introspection verifies them,
and a node going untrusted revokes *every* token minted for workloads on it with one row
(``kind = "node"``: tokens of that node whose ``node_epoch`` claim is at most ``node_epoch``), a
deleted pod every token of that pod (``kind = "pod"``).
Rows expire once every token they could match has expired, so the feed stays small.

``token_issuance_counts`` (migration 0017) counts issued tokens per hour, workload and node, for
the operator's Tokens page across replicas and workers. Each process adds its counts every few
seconds in one upsert (:mod:`mec_api.tokens.issuance_counts`), never on the token path.

``token_revocation_generation`` is one row whose number every revocation's transaction
increments: a follower that sees the number it last read knows, with one primary-key read, that
nothing was revoked since (see :mod:`mec_api.tokens.revocations`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, Float, Integer, String, event, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.sql_types import UtcDateTime
from mec_api.tokens.ledger import NODE_CHARS, WORKLOAD_CHARS


class TokensBase(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime}


class RevocationRow(TokensBase):
    __tablename__ = "token_revocations"

    # An identifier only: followers read the whole live set, never "after seq" (see
    # mec_api.tokens.revocations).
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))           # "token" | "node" | "pod"
    jti: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    node: Mapped[str | None] = mapped_column(String(253), nullable=True, index=True)
    # Read only by versions before migration 0008 (a downgrade keeps revoking by time).
    cutoff: Mapped[float | None] = mapped_column(Float, nullable=True)
    # node: tokens minted in this trust epoch of the node or an earlier one are revoked.
    node_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # pod: every token of the pod with this UID (its admission record is gone).
    pod_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # The revocation generation its transaction took (migration 0010; NULL before it).
    generation: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    # The stamp number ``generation - 1`` had when this entry's transaction took its number
    # (migration 0011; NULL before it): a follower continues only a history that names its own.
    prev_stamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RevocationGenerationRow(TokensBase):
    """One row (``id`` 1): incremented in the transaction of every revocation written."""
    __tablename__ = "token_revocation_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger)
    # Random, new with every number (migration 0011): tells a restored history's number N from
    # the number N a follower read before the restore.
    stamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class IssuanceCountRow(TokensBase):
    """Tokens issued in one UTC hour (``hour``: seconds since the epoch // 3600) to one
    workload (its ``client_id``, ``namespace:serviceaccount``) on one node; summed over every
    process."""
    __tablename__ = "token_issuance_counts"

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    workload: Mapped[str] = mapped_column(String(WORKLOAD_CHARS), primary_key=True)
    node: Mapped[str] = mapped_column(String(NODE_CHARS), primary_key=True)
    issued: Mapped[int] = mapped_column(BigInteger)


@event.listens_for(RevocationGenerationRow.__table__, "after_create")
def _first_generation(target: Any, connection: Any, **_: Any) -> None:
    """A table made by ``create_all`` (tests) starts with its row, as the migration does."""
    from mec_api.tokens.revocations import new_stamp
    connection.execute(insert(target).values(id=1, generation=0, stamp=new_stamp()))
