"""HTTP adapter: the attestation protocol under ``/attest/v1`` (FastAPI).

Binary TPM structures travel base64-encoded in JSON. Every refusal is RFC 7807 problem+json with
the failed ``check``, the offending value in ``detail`` and a ``hint``; a failed appraisal of
evidence the node's AK signed is not an HTTP error but a verdict (200, ``trusted: false``, every
failed check listed). Evidence the AK did not sign over the node's challenge is refused (4xx) and
changes nothing.

The protocol routes need no credential (TPM proofs authenticate nodes), so anyone can call them:
each is limited per source address, challenges also per node name, and every refusal is counted
(``umec_attest_refusals_total``) and logged with the source address.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer
from sqlalchemy import select

from attest.core.appraisal import Evidence
from attest.core.errors import AttestationError, MalformedStructure
from attest.core.identity import ActivationFailed, AkMismatch, EkMismatch
from attest.service import registrar, verifier
from attest.service.context import AttestContext
from attest.service.models import NodeRow
from kernel.ratelimit import RateLimiter

log = logging.getLogger("umec.attest")

REFUSALS: Final = Counter("umec_attest_refusals_total",
                          "Attestation protocol requests refused, by route and failed check.",
                          ["route", "check"])

T = TypeVar("T")
MAX_B64 = 1 << 20  # 1 MiB of base64 is far above any TPM structure or boot log we accept
# An EK certificate is one X.509 certificate of 1-2 KiB (TPMs keep it in an NV index of a few
# KiB). For an allowlisted EK it is stored unread with every pending enrolment, which anyone
# can create with public material: without this bound, 750 KB of junk per request.
MAX_EK_CERTIFICATE = 16 << 10


def _b64(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str) or len(value) > MAX_B64:
        raise ValueError("expected a base64 string of at most 1 MiB")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


B64 = Annotated[bytes, BeforeValidator(_b64),
                PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str)]
NodeName = Annotated[str, Path(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")]


class EnrollBody(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    ek_public: B64
    ak_public: B64
    ek_certificate: B64 | None = Field(default=None, max_length=MAX_EK_CERTIFICATE)
    node_class: str | None = Field(default=None, max_length=128)


class ActivateBody(BaseModel):
    enrollment_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    secret: B64


class EvidenceBody(BaseModel):
    nonce: B64
    quote: B64
    signature: B64
    pcrs: dict[str, dict[int, str]] = Field(description="bank -> pcr -> hex value")
    event_log: B64 | None = None


_STATUS: dict[type[AttestationError], int] = {
    MalformedStructure: 400, registrar.NodeNotFound: 404, EkMismatch: 409, AkMismatch: 409,
    ActivationFailed: 403, registrar.NoPendingActivation: 409,
    registrar.TooManyActivationFailures: 423, registrar.UnknownNodeClass: 422,
    verifier.PolicyMissing: 422, verifier.NothingToAcknowledge: 409,
    registrar.EkAlreadyBound: 409, registrar.NodeNameTaken: 409, verifier.EvidenceRaced: 409,
}


class RateLimited(AttestationError):
    check = "rate.limited"
    hint = ("Too many protocol requests from this source or for this node; retry after the "
            "Retry-After seconds. An agent needs one challenge per attestation interval.")

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def problem(exc: AttestationError) -> JSONResponse:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 403)
    headers = None
    if isinstance(exc, RateLimited):
        status, headers = 429, {"Retry-After": str(max(1, round(exc.retry_after)))}
    return JSONResponse(
        status_code=status, media_type="application/problem+json", headers=headers,
        content={"type": f"urn:umec:attest:{exc.check}", "title": type(exc).__name__,
                 "status": status, **exc.as_dict()})


def source_of(request: Request) -> str:
    """The peer address (no proxy header is trusted: a client could forge it)."""
    return request.client.host if request.client else "unknown"


def bucket_of(source: str) -> str:
    """The rate-limit key of a source address: an IPv6 client is its /64 (the smallest block a
    subscriber gets, so one host holds 2**64 addresses); IPv4 (also IPv4-mapped) per address."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return source


class Limits:
    """Token buckets for the credential-less protocol routes."""

    def __init__(self, ctx: AttestContext) -> None:
        cfg = ctx.config
        self.per_source = RateLimiter(cfg.rate_per_source, cfg.burst_per_source)
        self.challenges_per_node = RateLimiter(cfg.challenge_rate_per_node,
                                               cfg.challenge_burst_per_node)

    def admit(self, source: str, node: str | None = None) -> None:
        now = time.monotonic()
        source = bucket_of(source)
        wait = self.per_source.retry_after(source, now)
        if wait:
            raise RateLimited(f"too many attestation requests from {source}", wait)
        if node is not None:
            # Keyed by node *and* source: an attacker elsewhere cannot use up a node's share.
            wait = self.challenges_per_node.retry_after(f"{node}@{source}", now)
            if wait:
                raise RateLimited(f"too many challenges for node {node!r} from {source}", wait)

    def answered(self, source: str, node: str) -> None:
        """A challenge answered by evidence the node's AK signed is refunded: the per-node limit
        bounds challenges nobody answers (an attacker's), not a node attesting back to back."""
        self.challenges_per_node.refund(f"{node}@{bucket_of(source)}")


def _guarded(route: str, request: Request, fn: Callable[[], T]) -> T | JSONResponse:
    """Run a protocol step; a refusal is counted, logged with its source and answered typed."""
    try:
        return fn()
    except AttestationError as exc:
        REFUSALS.labels(route, exc.check).inc()
        log.warning("attestation request refused", extra={
            "route": route, "node": request.path_params.get("node"), "check": exc.check,
            "source": source_of(request), "detail": exc.detail})
        return problem(exc)


def _pcr_values(raw: dict[str, dict[int, str]]) -> dict[str, dict[int, bytes]]:
    try:
        return {bank: {int(i): bytes.fromhex(v) for i, v in values.items()}
                for bank, values in raw.items()}
    except ValueError:
        raise MalformedStructure("pcrs: every PCR value must be hex") from None


def node_summary(row: NodeRow) -> dict[str, Any]:
    return {"name": row.name, "node_class": row.node_class, "state": row.state,
            "ek_hash": row.ek_hash, "activated": row.ak_public is not None,
            "state_changed_at": row.state_changed_at.isoformat(),
            "last_pass_at": row.last_pass_at.isoformat() if row.last_pass_at else None,
            "last_verdict": row.last_verdict}


def make_router(ctx: AttestContext) -> APIRouter:
    """The protocol routes. All run in the thread pool, never on the event loop: a write can wait
    seconds for a database lock or a failover, and on the loop that wait would stall every
    other request and the revocation follower with it (issue 10 measured stalls of 4.9 s).
    """
    r = APIRouter(prefix="/attest/v1", tags=["attestation"])
    limits = Limits(ctx)

    @r.post("/nodes")
    def enroll(request: Request, body: EnrollBody) -> Any:
        def run() -> dict[str, Any]:
            limits.admit(source_of(request))
            ch = registrar.enroll(ctx, registrar.EnrollRequest(
                name=body.name, ek_public=body.ek_public, ak_public=body.ak_public,
                ek_certificate=body.ek_certificate, node_class=body.node_class))
            return {"enrollment_id": ch.enrollment_id,
                    "credential_blob": base64.b64encode(ch.credential_blob).decode(),
                    "encrypted_secret": base64.b64encode(ch.encrypted_secret).decode(),
                    "expires_in": ch.expires_in}
        return _guarded("enroll", request, run)

    @r.post("/nodes/{node}/activate")
    def activate(request: Request, node: NodeName, body: ActivateBody) -> Any:
        def run() -> dict[str, Any]:
            limits.admit(source_of(request))
            state = registrar.activate(ctx, node, body.enrollment_id, body.secret)
            return {"node": node, "activated": True, "state": state}
        return _guarded("activate", request, run)

    @r.post("/nodes/{node}/challenge")
    def challenge(request: Request, node: NodeName) -> Any:
        def run() -> dict[str, Any]:
            limits.admit(source_of(request), node)
            ch = verifier.issue_challenge(ctx, node)
            return {"nonce": base64.b64encode(ch.nonce).decode(), "selection": ch.selection,
                    "expires_at": ch.expires_at.isoformat()}
        return _guarded("challenge", request, run)

    @r.post("/nodes/{node}/evidence")
    def evidence(request: Request, node: NodeName, body: EvidenceBody) -> Any:
        def run() -> dict[str, Any]:
            limits.admit(source_of(request))
            res = verifier.submit_evidence(ctx, node, body.nonce, Evidence(
                attest=body.quote, signature=body.signature, pcr_values=_pcr_values(body.pcrs),
                event_log=body.event_log))
            limits.answered(source_of(request), node)
            answer = {"node": node, "state": res.state, **res.verdict.as_dict(),
                      "reason": res.verdict.reason, "attestation_result": res.result_token}
            if res.awaiting_ack:
                answer.update(trusted=False, awaiting_ack=True, reason=(
                    f"all checks passed, but the {res.state} node stays {res.state} until an "
                    f"operator acknowledges it (umec nodes ack {node})"))
            return answer
        return _guarded("evidence", request, run)

    def operator_refusal(authorization: str | None) -> JSONResponse | None:
        """The fleet view is for operators: ``Authorization: Bearer <UMEC_OPERATOR_TOKEN>``."""
        expected = ctx.config.operator_token
        scheme, _, token = (authorization or "").partition(" ")
        if expected and scheme.lower() == "bearer" and hmac.compare_digest(
                token.encode(), expected.encode()):
            return None
        return JSONResponse(
            status_code=401, media_type="application/problem+json",
            headers={"WWW-Authenticate": 'Bearer realm="umec-operator"'},
            content={"type": "urn:umec:attest:operator.unauthorized", "title": "Unauthorized",
                     "status": 401, "check": "operator.token",
                     "detail": "missing or wrong operator bearer token",
                     "hint": "Send Authorization: Bearer <token> (UMEC_OPERATOR_TOKEN, or the "
                             "operator-token file in the server's data directory)."})

    @r.get("/nodes")
    def list_nodes(authorization: Annotated[str | None, Header()] = None) -> Any:
        refusal = operator_refusal(authorization)
        if refusal is not None:
            return refusal
        with ctx.sessions() as session:
            rows = session.scalars(select(NodeRow).order_by(NodeRow.name))
            return [node_summary(n) for n in rows]

    @r.get("/nodes/{node}")
    def get_node(node: NodeName, authorization: Annotated[str | None, Header()] = None) -> Any:
        refusal = operator_refusal(authorization)
        if refusal is not None:
            return refusal
        with ctx.sessions() as session:
            row = session.get(NodeRow, node)
            if row is None:
                return problem(registrar.NodeNotFound(f"no node named {node!r}"))
            return node_summary(row)

    @r.post("/nodes/{node}/ack")
    def ack_node(request: Request, node: NodeName,
                 authorization: Annotated[str | None, Header()] = None) -> Any:
        """Operator acknowledgement (policies with ``require_ack``)."""
        refusal = operator_refusal(authorization)
        if refusal is not None:
            return refusal
        return _guarded("ack", request, lambda: {"node": node, "acknowledged": True,
                                                 "state": verifier.acknowledge(ctx, node)})

    return r
