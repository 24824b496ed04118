"""The k3s join credential (DESIGN protocol step 7): ``POST /attest/v1/nodes/{node}/join``.

Who gets a token: a node whose current state is ``trusted`` by a passing quote within its
interval (+ grace), asking with the nonce of that quote. The request is bound to the node's
latest verdict: the nonce must be the newest challenge the node spent, and it must have been
spent by the passing verdict now on record (``consumed_at == last_pass_at``). Then:

1. The grant is decided in one database transaction (:meth:`JoinService._grant`): the checks
   above, then a row in ``attest_join_tokens`` for (node, sha256(nonce)), which is unique. A
   replayed or concurrent request for the same verdict, on any replica, fails that insert and
   gets nothing new (``join.replayed``). A request for an older verdict is refused
   (``join.verdict_not_latest``). The token id is also derived from (node, nonce)
   (:func:`~attest.core.join_token.verdict_token_id`), so the apiserver's 409 on
   ``bootstrap-token-<id>`` stays a second guard.
2. One outstanding token per node: the same transaction revokes the node's earlier rows, and
   their Secrets are deleted by name before the new one is created. The node may have crashed
   before writing the previous one; rotating never leaves two valid tokens.
3. The Secret (``bootstrap.kubernetes.io/token`` in ``kube-system``, expiring in minutes) is
   created through the kubernetes client; the answer is the token in k3s's secure format,
   sealed so that only the node's TPM opens it (MakeCredential against its EK, bound to its
   AK's Name; AES-GCM under a key derived from the credential secret).

The server's rows are its record of its Secrets: it creates and deletes them by name and never
lists or reads Secrets (RBAC cannot narrow a ``list`` to a label, and a list of ``kube-system``
returns k3s's own credentials). A refused node gets a typed problem naming the state and the
failed checks of its verdict. When a node leaves ``trusted`` (untrusted, stale, removed),
:class:`JoinRevocationSink` deletes its outstanding Secrets; the lease holder's sweep deletes
used ones and expired ones (:meth:`JoinService.sweep_used`).

"Used" compares two stamps of one clock, the apiserver's: the node's Node
``creationTimestamp`` against its Secret's, which the apiserver returns in its answer to the
create and the row keeps in ``issued_at`` (no new column: until then the row holds
:data:`_UNSTAMPED`). umec's own clock never enters that decision, so a step of it (ahead or
back) cannot keep a used token alive. A token is handed out only after its row holds that
stamp; a create answer without a readable ``creationTimestamp`` fails closed (the Secret is
deleted, ``join.kubernetes``), and a row still unstamped was never handed out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from attest.core.credential import make_credential
from attest.core.errors import AttestationError
from attest.core.freshness import FUTURE_TOLERANCE
from attest.core.join_token import (
    NAMESPACE,
    SECRET_BYTES,
    bootstrap_secret,
    ca_hash,
    k3s_secure_token,
    new_bootstrap_token,
    object_created_at,
    rfc3339,
    seal_token,
    verdict_token_id,
)
from attest.core.tpm_structs import parse_tpm2b_public
from attest.service.context import AttestContext, NodeState
from attest.service.models import JoinTokenRow, NodeRow
from attest.service.notify.event import NOTIFY_FAILURES, NodeStateChanged
from attest.service.registrar import NodeNotFound
from kernel.lease import SqlLease
from kernel.periodic import PeriodicTask

log = logging.getLogger("umec.attest.join")

NODE_LABEL = "umec.io/join-node"
# How far the stamp of a Node (its creationTimestamp) may lie behind its Secret's for the Node
# still to count as created after it: both are the apiserver's clock, whole seconds, but in HA
# k3s each server stamps what it handles with its own clock. A Node created up to this long
# before a token also makes it count as used (deleted at the next sweep), the safe side.
JOIN_CLOCK_SKEW = timedelta(seconds=30)
_ALWAYS_USED = datetime.max.replace(tzinfo=UTC)
# A row's ``issued_at`` until it holds its Secret's creationTimestamp (never a real stamp).
_UNSTAMPED = datetime(9999, 12, 31, tzinfo=UTC)
VERDICT_ANNOTATION = "umec.io/join-verdict"


class JoinUntrusted(AttestationError):
    check = "join.untrusted"
    status = 403
    hint = ("Only a node trusted by a fresh passing quote gets a join token. Fix what the "
            "failed checks name (`umec nodes`), let the agent attest, then ask again.")


class JoinVerdictNotLatest(AttestationError):
    check = "join.verdict_not_latest"
    status = 409
    hint = ("Ask with the nonce of the node's latest passing quote, right after it (the agent "
            "does): attest again and retry.")


class JoinReplayed(AttestationError):
    check = "join.replayed"
    status = 409
    hint = ("This verdict already yielded its join token; a repeated request gets nothing new. "
            "Attest again for a new verdict if the token was lost.")


class JoinDisabled(AttestationError):
    check = "join.disabled"
    status = 404
    hint = ("The server hands out no k3s join tokens: set UMEC_K3S_SERVER_CA (the k3s "
            "server-ca.crt) and UMEC_KUBECONFIG or run in-cluster.")


class JoinKubernetesFailed(AttestationError):
    check = "join.kubernetes"
    status = 503
    hint = "The Kubernetes API refused or is unreachable; the node retries on its next round."


@dataclass(frozen=True)
class JoinBridge:
    """What the join needs from outside attest: the kubernetes CoreV1Api, the k3s cluster CA
    (PEM as on the server's disk; its sha256 goes into the token) and the token lifetime."""

    api: Any
    ca_pem: bytes
    ttl_seconds: float = 600.0
    sweep_seconds: float = 10.0  # how often used tokens (their Node is newer) are deleted


@dataclass(frozen=True)
class JoinGrant:
    token_id: str
    expires_at: datetime
    credential_blob: bytes
    encrypted_secret: bytes
    sealed_token: bytes

    def as_dict(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "expires_at": rfc3339(self.expires_at),
                "credential_blob": base64.b64encode(self.credential_blob).decode(),
                "encrypted_secret": base64.b64encode(self.encrypted_secret).decode(),
                "sealed_token": base64.b64encode(self.sealed_token).decode()}


_NODE = select(NodeRow.state, NodeRow.last_pass_at, NodeRow.last_verdict, NodeRow.node_class,
               NodeRow.ek_public, NodeRow.ak_public, NodeRow.last_pass_nonce,
               NodeRow.last_evidence_at)


def _api_error(err: Exception) -> int | None:
    return getattr(err, "status", None)


_LIVE = JoinTokenRow.revoked_at.is_(None)
Row = tuple[str, str]  # (row id, token id)


def _secret_name(token_id: str) -> str:
    return f"bootstrap-token-{token_id}"


def _used(node_created: datetime | None, secret_created: datetime) -> bool:
    """A token was used to join: its node's Node was created after its Secret (less
    :data:`JOIN_CLOCK_SKEW`), both as the apiserver stamped them."""
    return node_created is not None and node_created >= secret_created - JOIN_CLOCK_SKEW


class SecretUnstamped(Exception):
    """The apiserver's answer to a Secret create carries no readable creationTimestamp."""


class JoinService:
    """Hands out join tokens and deletes them, keeping its own record of every Secret it made
    (``attest_join_tokens``): it creates and deletes Secrets by name and never lists or reads
    ``kube-system``'s Secrets (deploy/host-join/join.yaml grants create and delete only)."""

    def __init__(self, ctx: AttestContext, bridge: JoinBridge) -> None:
        self.ctx, self.bridge = ctx, bridge
        self.ca_sha256 = ca_hash(bridge.ca_pem)

    # -- the checks -----------------------------------------------------------------------

    def _trusted_node(self, session: Session, name: str, now: datetime) -> Any:
        node = session.execute(_NODE.where(NodeRow.name == name)).first()
        if node is None:
            raise NodeNotFound(f"no node named {name!r}")
        interval = self._interval(session, node.node_class)
        if node.state != NodeState.TRUSTED:
            failed = [str(f.get("check") if isinstance(f, dict) else f)
                      for f in (node.last_verdict or {}).get("failed_checks") or []]
            raise JoinUntrusted(f"node {name!r} is {node.state}; failed checks: "
                                f"{', '.join(failed) or 'none recorded'}")
        last = node.last_pass_at
        if last is None or last < now - timedelta(seconds=interval) \
                or last > now + FUTURE_TOLERANCE:
            raise JoinUntrusted(f"node {name!r} has no passing quote within {interval:.0f} s "
                                f"(last: {last.isoformat() if last else 'never'})")
        return node

    def _interval(self, session: Any, node_class: str) -> float:
        try:
            interval = self.ctx.policy_for(session, node_class).interval_seconds
        except LookupError:
            interval = None
        return (interval or self.ctx.config.interval_seconds) + \
            self.ctx.config.stale_grace_seconds

    @staticmethod
    def _check_latest_verdict(name: str, nonce: bytes, node: Any) -> None:
        """``nonce`` is the node's latest passing quote's, and no verdict was recorded since."""
        if node.last_pass_nonce != nonce.hex() or node.last_evidence_at != node.last_pass_at:
            raise JoinVerdictNotLatest(
                f"nonce {nonce.hex()[:16]}… is not the one of node {name!r}'s latest passing "
                f"quote")

    # -- the rows and their Secrets -------------------------------------------------------

    def _grant(self, name: str, nonce: bytes, now: datetime) -> tuple[Any, str, list[Row]]:
        """One transaction decides the grant: the node is trusted, the nonce is its latest
        passing verdict's, its live tokens are revoked (one outstanding token per node) and
        this verdict's row is inserted. ``(node, verdict)`` is unique, so a replayed or
        concurrent request for the same verdict, on any replica, fails the insert."""
        row = JoinTokenRow(id=str(uuid.uuid4()), node=name,
                           token_id=verdict_token_id(name, nonce),
                           verdict=hashlib.sha256(nonce).hexdigest(), issued_at=_UNSTAMPED,
                           expires_at=now + timedelta(seconds=self.bridge.ttl_seconds))
        try:
            with self.ctx.sessions.begin() as session:
                node = self._trusted_node(session, name, now)
                self._check_latest_verdict(name, nonce, node)
                rotated = self._revoke(session, JoinTokenRow.node == name, now)
                session.add(row)
        except IntegrityError:
            raise JoinReplayed(f"the verdict of nonce {nonce.hex()[:16]}… already yielded "
                               f"its join token") from None
        return node, row.id, rotated

    @staticmethod
    def _revoke(session: Session, where: ColumnElement[bool], now: datetime) -> list[Row]:
        """Mark the live rows ``where`` revoked (before their Secrets are deleted)."""
        rows = [(r.id, r.token_id) for r in session.execute(
            select(JoinTokenRow.id, JoinTokenRow.token_id).where(where, _LIVE))]
        if rows:
            session.execute(update(JoinTokenRow).where(
                JoinTokenRow.id.in_([r[0] for r in rows]), _LIVE).values(revoked_at=now))
        return rows

    def _delete_secret(self, token_id: str) -> None:
        try:
            self.bridge.api.delete_namespaced_secret(_secret_name(token_id), NAMESPACE,
                                                     _preload_content=False)
        except Exception as err:
            if _api_error(err) != 404:  # 404: already gone (expired and cleaned, or deleted)
                raise

    def _delete(self, rows: list[Row], now: datetime) -> list[str]:
        """Delete the Secrets of revoked ``rows`` by name and record which are gone; the first
        failure is raised after that (the sweep retries what is left)."""
        gone: list[Row] = []
        failure: Exception | None = None
        for row in rows:
            try:
                self._delete_secret(row[1])
            except Exception as err:
                failure = failure or err
                continue
            gone.append(row)
        if gone:
            with self.ctx.sessions.begin() as session:
                session.execute(update(JoinTokenRow).where(
                    JoinTokenRow.id.in_([r[0] for r in gone])).values(deleted_at=now))
        if failure is not None:
            raise failure
        return [_secret_name(r[1]) for r in gone]

    def delete_secrets(self, name: str) -> list[str]:
        """Revoke ``name``'s outstanding tokens and delete their Secrets."""
        now = self.ctx.now()
        with self.ctx.sessions.begin() as session:
            rows = self._revoke(session, JoinTokenRow.node == name, now)
        return self._delete(rows, now)

    def _is_live(self, row_id: str) -> bool:
        with self.ctx.sessions() as session:
            return session.execute(select(JoinTokenRow.id).where(
                JoinTokenRow.id == row_id, _LIVE)).first() is not None

    def _stamp(self, row_id: str, secret_created: datetime) -> None:
        """Record the Secret's creationTimestamp (the apiserver's clock) in its live row."""
        with self.ctx.sessions.begin() as session:
            session.execute(update(JoinTokenRow).where(JoinTokenRow.id == row_id, _LIVE)
                            .values(issued_at=secret_created))

    # -- the sweep --------------------------------------------------------------------------

    def sweep_used(self) -> list[str]:
        """The lease holder's round over umec's own rows (never a list of Secrets): a node
        whose Node object was created after its token's Secret has joined with it, so the
        token is revoked and deleted (a used token left in place could join another machine);
        rows dated in umec's future go (:meth:`_sweep_future`); deletions that failed are
        retried; rows past ``expires_at`` go, with their Secret if it is still there."""
        now = self.ctx.now()
        deleted = self._sweep_future(now) + self._sweep_joined(now)
        deleted += self._sweep_unfinished(now) + self._sweep_expired(now)
        if deleted:
            log.info("used or expired join tokens deleted", extra={"secrets": deleted})
        return deleted

    def _node_created(self, node: str) -> datetime | None:
        """When ``node``'s Node object was created (the apiserver's clock), None if there is
        none. An unreadable ``creationTimestamp`` fails closed: the Node counts as created after
        every live token (they are deleted, as before this check existed)."""
        try:
            raw = self.bridge.api.read_node(node, _preload_content=False).data
        except Exception as err:
            if _api_error(err) == 404:
                return None  # not joined yet: the token stays until used, untrust or expiry
            raise
        created = object_created_at(raw)
        if created is None:
            log.warning("a Node without a readable creationTimestamp: its join tokens count "
                        "as used", extra={"node": node})
            return _ALWAYS_USED
        return created

    def _sweep_future(self, now: datetime) -> list[str]:
        """Live rows issued in umec's future (``expires_at`` further ahead than a token issued
        now would expire, by more than FUTURE_TOLERANCE): umec's clock stepped back since, so
        the row's expiry, and the ``expiration`` in its Secret, lie that step too far out. Such
        a row is revoked and its Secret deleted rather than kept alive by the step: whether it
        was used is decided on the apiserver's clock anyway (:meth:`_sweep_joined`), but an
        unused token's lifetime is umec's, and a stolen one must not outlast it. The node
        asks again after its next passing quote. (A lowered ``ttl_seconds`` does the same to
        the tokens issued under the longer one, also the safe side.)"""
        horizon = now + timedelta(seconds=self.bridge.ttl_seconds) + FUTURE_TOLERANCE
        with self.ctx.sessions.begin() as session:
            rows = self._revoke(session, JoinTokenRow.expires_at > horizon, now)
        if rows:
            log.warning("join tokens issued in the future of the clock revoked (it stepped "
                        "back)", extra={"token_ids": [r[1] for r in rows]})
        return self._delete(rows, now)

    def _sweep_joined(self, now: datetime) -> list[str]:
        """Live tokens used to join: the node's Node object was created after the token's
        Secret, both stamps the apiserver's (:func:`_used`). A token issued to a node that had
        already joined (it re-attests after a reboot) stays for its rejoin, until expiry or
        untrust. Unstamped rows are skipped: their token was not handed out (yet)."""
        with self.ctx.sessions() as session:
            live = session.execute(select(
                JoinTokenRow.id, JoinTokenRow.node, JoinTokenRow.issued_at).where(
                _LIVE, JoinTokenRow.expires_at >= now,
                JoinTokenRow.issued_at < _UNSTAMPED)).all()
        deleted: list[str] = []
        for node in sorted({r.node for r in live}):
            created = self._node_created(node)
            used = [r.id for r in live if r.node == node and _used(created, r.issued_at)]
            if used:
                with self.ctx.sessions.begin() as session:
                    rows = self._revoke(session, JoinTokenRow.id.in_(used), now)
                deleted += self._delete(rows, now)
        return deleted

    def _sweep_unfinished(self, now: datetime) -> list[str]:
        with self.ctx.sessions() as session:
            rows = [(r.id, r.token_id) for r in session.execute(
                select(JoinTokenRow.id, JoinTokenRow.token_id).where(
                    JoinTokenRow.revoked_at.is_not(None), JoinTokenRow.deleted_at.is_(None),
                    JoinTokenRow.expires_at >= now))]
        return self._delete(rows, now)

    def _sweep_expired(self, now: datetime) -> list[str]:
        with self.ctx.sessions.begin() as session:
            expired = session.execute(select(
                JoinTokenRow.id, JoinTokenRow.token_id, JoinTokenRow.deleted_at).where(
                JoinTokenRow.expires_at < now)).all()
            if not expired:
                return []
            session.execute(update(JoinTokenRow).where(
                JoinTokenRow.id.in_([r.id for r in expired]), _LIVE).values(revoked_at=now))
        deleted = self._delete([(r.id, r.token_id) for r in expired if r.deleted_at is None],
                               now)
        with self.ctx.sessions.begin() as session:
            session.execute(delete(JoinTokenRow).where(
                JoinTokenRow.id.in_([r.id for r in expired])))
        return deleted

    # -- the route's work -----------------------------------------------------------------

    def _create_secret(self, name: str, nonce: bytes, token_id: str,
                       now: datetime) -> tuple[str, datetime, datetime | None]:
        """Create the Secret: (the k3s token, its expiry, the Secret's creationTimestamp as
        the apiserver's answer gives it, None if unreadable)."""
        token = new_bootstrap_token(token_id, now, self.bridge.ttl_seconds)
        body = bootstrap_secret(token, name, {NODE_LABEL: name, "app.kubernetes.io/managed-by":
                                              "umec"},
                                {VERDICT_ANNOTATION: hashlib.sha256(nonce).hexdigest()})
        try:
            answer = self.bridge.api.create_namespaced_secret(NAMESPACE, body,
                                                              _preload_content=False)
        except Exception as err:
            if _api_error(err) == 409:  # a Secret of that name that is not this row's
                raise JoinReplayed(f"the verdict of nonce {nonce.hex()[:16]}… already yielded "
                                   f"{token.secret_name}") from None
            raise
        raw = getattr(answer, "data", None)
        created = object_created_at(raw) if isinstance(raw, bytes) else None
        return k3s_secure_token(self.ca_sha256, token), token.expires_at, created

    def _abandon(self, row: Row, now: datetime, *, created: bool) -> None:
        """The grant failed after its row was committed: revoke the row (its verdict stays
        spent) and delete its Secret if this request may have created it."""
        with self.ctx.sessions.begin() as session:
            session.execute(update(JoinTokenRow).where(JoinTokenRow.id == row[0], _LIVE)
                            .values(revoked_at=now, deleted_at=None if created else now))
        if created:
            with contextlib.suppress(Exception):  # the sweep retries an unfinished delete
                self._delete([row], now)

    def _create_checked(self, name: str, nonce: bytes, row: Row, rotated: list[Row],
                        now: datetime) -> tuple[str, datetime]:
        """Delete the rotated Secrets, create this one, record its creationTimestamp in the
        row, then check the row is still live: a node that left ``trusted`` or a newer verdict
        may have revoked it meanwhile, and the Secret must not outlive its row. A Secret whose
        stamp is unreadable fails closed (:class:`SecretUnstamped`: the caller deletes it):
        its use could never be told on the apiserver's clock."""
        self._delete(rotated, now)
        token, expires, created = self._create_secret(name, nonce, row[1], now)
        if created is None:
            raise SecretUnstamped(f"the apiserver's answer to creating {_secret_name(row[1])} "
                                  f"has no readable metadata.creationTimestamp")
        self._stamp(row[0], created)
        if not self._is_live(row[0]):
            self._delete([row], now)
            raise JoinVerdictNotLatest(f"node {name!r}'s token for nonce {nonce.hex()[:16]}… "
                                       f"was revoked while it was issued")
        return token, expires

    def issue(self, name: str, nonce: bytes) -> JoinGrant:
        now = self.ctx.now()
        node, row_id, rotated = self._grant(name, nonce, now)
        row = (row_id, verdict_token_id(name, nonce))
        try:
            token, expires = self._create_checked(name, nonce, row, rotated, now)
        except JoinReplayed:
            self._abandon(row, now, created=False)
            raise
        except AttestationError:
            raise
        except Exception as err:
            self._abandon(row, now, created=True)
            raise JoinKubernetesFailed(f"{type(err).__name__}: {str(err)[:300]}") from None
        ek = parse_tpm2b_public(node.ek_public)
        ak_name = parse_tpm2b_public(node.ak_public).name()
        secret = os.urandom(SECRET_BYTES)
        blob, encrypted = make_credential(ek, ak_name, secret)
        log.info("join token issued", extra={"node": name, "token_id": row[1],
                                             "expires_at": rfc3339(expires)})
        return JoinGrant(row[1], expires, blob, encrypted, seal_token(secret, name, token))


def join_sweep_task(ctx: AttestContext, join: JoinService) -> PeriodicTask:
    """The lease holder deletes used join tokens every ``sweep_seconds``."""
    every = join.bridge.sweep_seconds
    lease = SqlLease(ctx.sessions, "k3s-join-sweep", ttl=max(3 * every, 3.0),
                     now=lambda: ctx.now())
    return PeriodicTask("k3s join token sweep", every, join.sweep_used, lease=lease)


class JoinRevocationSink:
    """Deletes the bootstrap Secrets of a node that leaves ``trusted`` (a state-change sink)."""

    name = "k3s-join"

    def __init__(self, join: JoinService) -> None:
        self.join = join

    async def publish(self, event: NodeStateChanged) -> None:
        if event.state == NodeState.TRUSTED:
            return
        try:
            deleted = await anyio.to_thread.run_sync(self.join.delete_secrets, event.node)
        except Exception as err:
            NOTIFY_FAILURES.labels(sink=self.name).inc()
            log.warning("join token deletion failed", extra={
                "node": event.node, "state": event.state,
                "error": f"{type(err).__name__}: {err}"})
            return
        if deleted:
            log.info("join tokens of a node that left trusted deleted", extra={
                "node": event.node, "state": event.state, "secrets": deleted})


__all__ = ["JOIN_CLOCK_SKEW", "NODE_LABEL", "VERDICT_ANNOTATION", "JoinBridge", "JoinDisabled",
           "JoinGrant", "JoinKubernetesFailed", "JoinReplayed", "JoinRevocationSink", "JoinService",
           "JoinUntrusted", "JoinVerdictNotLatest", "SecretUnstamped", "join_sweep_task"]
