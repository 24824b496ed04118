"""The k3s join credential (DESIGN protocol step 7): ``POST /attest/v1/nodes/{node}/join``.

Who gets a token: a node whose current state is ``trusted`` by a passing quote within its
interval (+ grace), asking with the nonce of that quote. The request is bound to the node's
latest verdict: the nonce must be the newest challenge the node spent, and it must have been
spent by the passing verdict now on record (``consumed_at == last_pass_at``). Then:

1. The token id is derived from (node, nonce) (:func:`~attest.core.join_token.verdict_token_id`),
   so one verdict yields at most one token: a replayed or concurrent request for the same
   verdict runs into the apiserver's 409 on ``bootstrap-token-<id>`` and gets nothing new
   (``join.replayed``). A request for an older verdict is refused (``join.verdict_not_latest``).
2. One outstanding token per node: a new verdict's request rotates, deleting the node's earlier
   bootstrap Secrets (label ``umec.io/join-node``) before creating the new one. The node may
   have crashed before writing the previous one; rotating never leaves two valid tokens.
3. The Secret (``bootstrap.kubernetes.io/token`` in ``kube-system``, expiring in minutes) is
   created through the kubernetes client; the answer is the token in k3s's secure format,
   sealed so that only the node's TPM opens it (MakeCredential against its EK, bound to its
   AK's Name; AES-GCM under a key derived from the credential secret).

A refused node gets a typed problem naming the state and the failed checks of its verdict.
When a node leaves ``trusted`` (untrusted, stale, removed), :class:`JoinRevocationSink` deletes
its bootstrap Secrets, so an unused token cannot join a node that is no longer trusted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import anyio.to_thread
import urllib3
from sqlalchemy import select

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
    rfc3339,
    seal_token,
    verdict_token_id,
)
from attest.core.tpm_structs import parse_tpm2b_public
from attest.service.context import AttestContext, NodeState
from attest.service.models import NodeRow, NonceRow
from attest.service.notify.event import NOTIFY_FAILURES, NodeStateChanged
from attest.service.registrar import NodeNotFound
from kernel.lease import SqlLease
from kernel.periodic import PeriodicTask

log = logging.getLogger("umec.attest.join")

NODE_LABEL = "umec.io/join-node"
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
    sweep_seconds: float = 10.0  # how often used tokens (their Node exists) are deleted


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
               NodeRow.ek_public, NodeRow.ak_public)


def _api_error(err: Exception) -> int | None:
    return getattr(err, "status", None)


class JoinService:
    def __init__(self, ctx: AttestContext, bridge: JoinBridge) -> None:
        self.ctx, self.bridge = ctx, bridge
        self.ca_sha256 = ca_hash(bridge.ca_pem)

    # -- the checks -----------------------------------------------------------------------

    def _trusted_node(self, name: str, now: datetime) -> Any:
        with self.ctx.sessions() as session:
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

    def _check_latest_verdict(self, name: str, nonce: bytes, last_pass_at: datetime) -> None:
        with self.ctx.sessions() as session:
            latest = session.execute(
                select(NonceRow.nonce, NonceRow.consumed_at)
                .where(NonceRow.node == name, NonceRow.consumed_at.is_not(None))
                .order_by(NonceRow.issued_at.desc()).limit(1)).first()
        if latest is None or latest.nonce != nonce.hex() or latest.consumed_at != last_pass_at:
            raise JoinVerdictNotLatest(
                f"nonce {nonce.hex()[:16]}… is not the one of node {name!r}'s latest passing "
                f"quote")

    # -- the Secrets ----------------------------------------------------------------------

    def node_secrets(self, name: str) -> list[str]:
        """Names of ``name``'s bootstrap Secrets (the label, re-checked on every item)."""
        response = cast(urllib3.BaseHTTPResponse, self.bridge.api.list_namespaced_secret(
            NAMESPACE, label_selector=f"{NODE_LABEL}={name}", _preload_content=False))
        items = json.loads(response.data).get("items") or []
        return [str(item["metadata"]["name"]) for item in items
                if ((item.get("metadata") or {}).get("labels") or {}).get(NODE_LABEL) == name]

    def delete_secrets(self, name: str, keep: str | None = None) -> list[str]:
        deleted = []
        for secret in self.node_secrets(name):
            if secret == keep:
                continue
            try:
                self.bridge.api.delete_namespaced_secret(secret, NAMESPACE,
                                                         _preload_content=False)
            except Exception as err:
                if _api_error(err) != 404:
                    raise
            deleted.append(secret)
        return deleted

    def sweep_used(self) -> list[str]:
        """Delete every umec bootstrap Secret whose node has joined (its Node object exists):
        a used token has done its work, and left in place it could join another machine."""
        response = cast(urllib3.BaseHTTPResponse, self.bridge.api.list_namespaced_secret(
            NAMESPACE, label_selector=NODE_LABEL, _preload_content=False))
        deleted = []
        for item in json.loads(response.data).get("items") or []:
            meta = item.get("metadata") or {}
            node = (meta.get("labels") or {}).get(NODE_LABEL)
            if not node:
                continue
            try:
                self.bridge.api.read_node(node, _preload_content=False)
            except Exception as err:
                if _api_error(err) == 404:
                    continue  # not joined yet: the token stays until used, untrust or expiry
                raise
            deleted += self.delete_secrets(node)
        if deleted:
            log.info("used join tokens deleted", extra={"secrets": deleted})
        return deleted

    def _create_secret(self, name: str, nonce: bytes, now: datetime) -> tuple[str, datetime]:
        token = new_bootstrap_token(verdict_token_id(name, nonce), now,
                                    self.bridge.ttl_seconds)
        body = bootstrap_secret(token, name, {NODE_LABEL: name, "app.kubernetes.io/managed-by":
                                              "umec"},
                                {VERDICT_ANNOTATION: hashlib.sha256(nonce).hexdigest()})
        try:
            self.bridge.api.create_namespaced_secret(NAMESPACE, body, _preload_content=False)
        except Exception as err:
            if _api_error(err) == 409:
                raise JoinReplayed(f"the verdict of nonce {nonce.hex()[:16]}… already yielded "
                                   f"{token.secret_name}") from None
            raise
        return k3s_secure_token(self.ca_sha256, token), token.expires_at

    # -- the route's work -----------------------------------------------------------------

    def issue(self, name: str, nonce: bytes) -> JoinGrant:
        now = self.ctx.now()
        node = self._trusted_node(name, now)
        self._check_latest_verdict(name, nonce, node.last_pass_at)
        token_id = verdict_token_id(name, nonce)
        try:
            if f"bootstrap-token-{token_id}" in self.node_secrets(name):
                raise JoinReplayed(f"the verdict of nonce {nonce.hex()[:16]}… already yielded "
                                   f"bootstrap-token-{token_id}")
            self.delete_secrets(name)  # one outstanding token per node: rotate
            token, expires = self._create_secret(name, nonce, now)
        except AttestationError:
            raise
        except Exception as err:
            raise JoinKubernetesFailed(f"{type(err).__name__}: {str(err)[:300]}") from None
        ek = parse_tpm2b_public(node.ek_public)
        ak_name = parse_tpm2b_public(node.ak_public).name()
        secret = os.urandom(SECRET_BYTES)
        blob, encrypted = make_credential(ek, ak_name, secret)
        log.info("join token issued", extra={"node": name, "token_id": token_id,
                                             "expires_at": rfc3339(expires)})
        return JoinGrant(token_id, expires, blob, encrypted, seal_token(secret, name, token))


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


__all__ = ["NODE_LABEL", "VERDICT_ANNOTATION", "JoinBridge", "JoinDisabled", "JoinGrant",
           "JoinKubernetesFailed", "JoinReplayed", "JoinRevocationSink", "JoinService",
           "JoinUntrusted", "JoinVerdictNotLatest", "join_sweep_task"]
