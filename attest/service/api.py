"""HTTP adapter: the attestation protocol under ``/attest/v1`` (FastAPI).

Binary TPM structures travel base64-encoded in JSON. Every refusal is an
:class:`~attest.core.errors.AttestationError` carrying its HTTP ``status``, answered by the one
handler (:mod:`kernel.problems`) as RFC 9457 problem+json with the failed ``check``, the
offending value in ``detail`` and a ``hint``; a failed appraisal of
evidence the node's AK signed is not an HTTP error but a verdict (200, ``trusted: false``, every
failed check listed). Evidence the AK did not sign over the node's challenge is refused (4xx) and
changes nothing.

The protocol routes need no credential (TPM proofs authenticate nodes), so anyone can call them:
each is limited per source address, challenges also per node name (``ctx.limits``,
:mod:`attest.service.limits`), and every refusal is counted (``umec_attest_refusals_total``) and
logged with the source address (once, by the app's handler: :mod:`kernel.problems`).

``umec`` sets ``app.state.attest`` to the :class:`AttestContext` and includes :data:`router`.
No route's work runs on the event loop: a write can wait seconds for a database lock or a
failover, and on the loop that wait would stall every other request and the revocation follower
with it (issue 10 measured stalls of 4.9 s). The protocol routes, called by every node every
interval, are ``async def`` and hand their step to :func:`kernel.offload.in_thread` (a cheaper
hand-off than FastAPI's for sync routes); the operator routes are sync ``def``, which FastAPI
runs in its thread pool. The two steps of every round, challenge and evidence, are answered
without FastAPI's per-request handler when they are well formed (:mod:`kernel.fastroute`),
and by it otherwise.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable
from typing import Annotated, Any, Final, ParamSpec, TypeVar

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, ValidationError
from starlette.requests import ClientDisconnect

from attest.core.appraisal import Evidence
from attest.core.errors import AttestationError, MalformedStructure
from attest.service import registrar, verifier
from attest.service.context import AttestContext
from attest.service.deps import AttestCtx, attest_context
from attest.service.fleet import fleet_summaries, node_summary
from attest.service.join import JoinDisabled
from attest.service.limits import Limits, RateLimited, bucket_of
from attest.service.operator import acknowledge as operator_acknowledge
from attest.service.operator import node_detail
from kernel.bearer import OperatorUnauthorized, require_operator_token
from kernel.fastroute import fast_path_route
from kernel.offload import in_thread

__all__ = ["MAX_B64", "REFUSALS", "Limits", "OperatorUnauthorized", "RateLimited", "bucket_of",
           "guarded", "node_summary", "require_operator", "router", "source_of"]

log = logging.getLogger("umec.attest")

REFUSALS: Final = Counter("umec_attest_refusals_total",
                          "Attestation protocol requests refused, by route and failed check.",
                          ["route", "check"])

T = TypeVar("T")
P = ParamSpec("P")
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
# An IMA list: sent in full once per boot (then only new entries); 10,000 entries are ~1.5 MB.
MAX_IMA_B64 = 64 << 20


def _b64_ima(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) > MAX_IMA_B64:
        raise ValueError("expected a base64 string of at most 64 MiB")
    return _b64(value) if len(value) <= MAX_B64 else base64.b64decode(value, validate=True)


ImaB64 = Annotated[bytes, BeforeValidator(_b64_ima)]
NODE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
NodeName = Annotated[str, Path(pattern=NODE_NAME_PATTERN)]
_NODE_NAME = re.compile(NODE_NAME_PATTERN)


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
    ima_log: ImaB64 | None = Field(default=None, description="IMA list from ima_offset")
    ima_offset: int = Field(default=0, ge=0, le=1 << 31)


def source_of(request: Request) -> str:
    """The peer address as uvicorn reports it. This code reads no proxy header itself, but
    uvicorn applies ``X-Forwarded-For`` from the addresses in ``FORWARDED_ALLOW_IPS`` (loopback
    by default), so a process on the server's own host can claim another address here
    (docs/decisions.md, "Review of issue 14's operator surfaces")."""
    return request.client.host if request.client else "unknown"


def _guarded(route: str, request: Request, fn: Callable[P, T], *args: P.args,
             **kwargs: P.kwargs) -> T:
    """Run a protocol step; a refusal is counted, then raised on to the app's handler, which
    answers it with its own status and logs it once (route, check, peer, detail, request id:
    kernel.problems.log_refusal)."""
    try:
        return fn(*args, **kwargs)
    except AttestationError as exc:
        REFUSALS.labels(route, exc.check).inc()
        raise


def _pcr_values(raw: dict[str, dict[int, str]]) -> dict[str, dict[int, bytes]]:
    try:
        return {bank: {int(i): bytes.fromhex(v) for i, v in values.items()}
                for bank, values in raw.items()}
    except ValueError:
        raise MalformedStructure("pcrs: every PCR value must be hex") from None


router = APIRouter(prefix="/attest/v1", tags=["attestation"])


def _enroll(ctx: AttestContext, source: str, body: EnrollBody) -> dict[str, Any]:
    ctx.limits.admit(source)
    ch = registrar.enroll(ctx, registrar.EnrollRequest(
        name=body.name, ek_public=body.ek_public, ak_public=body.ak_public,
        ek_certificate=body.ek_certificate, node_class=body.node_class))
    return {"enrollment_id": ch.enrollment_id,
            "credential_blob": base64.b64encode(ch.credential_blob).decode(),
            "encrypted_secret": base64.b64encode(ch.encrypted_secret).decode(),
            "expires_in": ch.expires_in}


@router.post("/nodes")
async def enroll(request: Request, body: EnrollBody, ctx: AttestCtx) -> Any:
    """Protocol step 1: enrol a node's EK and AK; answers a credential challenge."""
    return await in_thread(_guarded, "enroll", request, _enroll, ctx, source_of(request), body)


def _activate(ctx: AttestContext, source: str, node: str, body: ActivateBody) -> dict[str, Any]:
    ctx.limits.admit(source)
    state = registrar.activate(ctx, node, body.enrollment_id, body.secret)
    return {"node": node, "activated": True, "state": state}


@router.post("/nodes/{node}/activate")
async def activate(request: Request, node: NodeName, body: ActivateBody, ctx: AttestCtx) -> Any:
    """Protocol step 2: prove the credential challenge; binds the name to the EK and AK."""
    return await in_thread(_guarded, "activate", request, _activate, ctx, source_of(request),
                           node, body)


def _challenge_json(ch: verifier.Challenge) -> dict[str, Any]:
    """A challenge as both routes answer it (``expires_in``: seconds from this answer, for a
    node whose clock is not the server's)."""
    return {"nonce": base64.b64encode(ch.nonce).decode(), "selection": ch.selection,
            "expires_at": ch.expires_at.isoformat(), "expires_in": ch.expires_in}


def _challenge(ctx: AttestContext, source: str, node: str) -> dict[str, Any]:
    ctx.limits.admit(source, node)
    return _challenge_json(verifier.issue_challenge(ctx, node))


async def challenge(request: Request, node: NodeName, ctx: AttestCtx) -> Any:
    """Protocol step 3: a fresh single-use nonce and the PCR selection to quote."""
    return await in_thread(_guarded, "challenge", request, _challenge, ctx, source_of(request),
                           node)


async def _challenge_fast(request: Request) -> Response | None:
    """:func:`challenge` without FastAPI's handler, for a well-formed name (kernel.fastroute);
    anything else goes to FastAPI's handler, which answers its own 422."""
    node = request.path_params["node"]
    if _NODE_NAME.fullmatch(node) is None:
        return None
    ctx = await attest_context(request)
    return JSONResponse(await in_thread(_guarded, "challenge", request, _challenge, ctx,
                                        source_of(request), node))


router.add_api_route("/nodes/{node}/challenge", challenge, methods=["POST"],
                     route_class_override=fast_path_route(_challenge_fast))


def _evidence(ctx: AttestContext, source: str, node: str, body: EvidenceBody) -> dict[str, Any]:
    ctx.limits.admit(source)
    res = verifier.submit_evidence(ctx, node, body.nonce, Evidence(
        attest=body.quote, signature=body.signature, pcr_values=_pcr_values(body.pcrs),
        event_log=body.event_log, ima_log=body.ima_log, ima_offset=body.ima_offset))
    ctx.limits.answered(source, node)
    answer = {"node": node, "state": res.state, **res.verdict.as_dict(),
              "reason": res.verdict.reason, "attestation_result": res.result_token}
    if res.ima_offset is not None:
        answer["ima_offset"] = res.ima_offset
    if res.next_challenge is not None:
        answer["next_challenge"] = _challenge_json(res.next_challenge)
    if res.awaiting_ack:
        answer.update(trusted=False, awaiting_ack=True, reason=(
            f"all checks passed, but the {res.state} node stays {res.state} until an "
            f"operator acknowledges it (umec nodes ack {node})"))
    return answer


async def evidence(request: Request, node: NodeName, body: EvidenceBody, ctx: AttestCtx) -> Any:
    """Protocol step 4: a quote over the challenge; answers the verdict and the node's next
    challenge (``next_challenge``: its next round needs no challenge request)."""
    return await in_thread(_guarded, "evidence", request, _evidence, ctx, source_of(request),
                           node, body)


async def _evidence_fast(request: Request) -> Response | None:
    """:func:`evidence` without FastAPI's handler, for a well-formed name and a JSON body that
    validates (kernel.fastroute; pydantic's JSON parser, like FastAPI's ``json.loads``, keeps
    the last of duplicate keys); anything else goes to FastAPI's handler and its errors."""
    node = request.path_params["node"]
    if (_NODE_NAME.fullmatch(node) is None
            or request.headers.get("content-type") != "application/json"):
        return None
    try:
        body = EvidenceBody.model_validate_json(await request.body())
    except (ValidationError, ClientDisconnect):
        return None
    ctx = await attest_context(request)
    return JSONResponse(await in_thread(_guarded, "evidence", request, _evidence, ctx,
                                        source_of(request), node, body))


router.add_api_route("/nodes/{node}/evidence", evidence, methods=["POST"],
                     route_class_override=fast_path_route(_evidence_fast))


class JoinBody(BaseModel):
    nonce: B64 = Field(description="the nonce of the node's latest passing quote")


def _join(request: Request, ctx: AttestContext, source: str, node: str,
          body: JoinBody) -> dict[str, Any]:
    ctx.limits.admit(source)
    service = getattr(request.app.state, "attest_join", None)
    if service is None:
        raise JoinDisabled("this server is not configured to hand out k3s join tokens")
    return {"node": node, **service.issue(node, body.nonce).as_dict()}


@router.post("/nodes/{node}/join")
async def join(request: Request, node: NodeName, body: JoinBody, ctx: AttestCtx) -> Any:
    """Protocol step 7: a trusted node's k3s bootstrap token, sealed to its TPM
    (attest.service.join)."""
    return await in_thread(_guarded, "join", request, _join, request, ctx,
                           source_of(request), node, body)


def _require_operator(ctx: AttestContext, authorization: str | None) -> None:
    """The fleet view is for operators: ``Authorization: Bearer <UMEC_OPERATOR_TOKEN>``."""
    require_operator_token(authorization, ctx.config.operator_token)


# The operator routes of attest.service.operator_api use the same two.
require_operator = _require_operator
guarded = _guarded


@router.get("/nodes")
def list_nodes(ctx: AttestCtx, authorization: Annotated[str | None, Header()] = None) -> Any:
    """The fleet (operators only)."""
    _require_operator(ctx, authorization)
    return fleet_summaries(ctx.sessions)


@router.get("/nodes/{node}")
def get_node(node: NodeName, ctx: AttestCtx,
             authorization: Annotated[str | None, Header()] = None) -> Any:
    """One node and its recent state changes, newest first (operators only)."""
    _require_operator(ctx, authorization)
    return node_detail(ctx.sessions, node)


@router.post("/nodes/{node}/ack")
def ack_node(request: Request, node: NodeName, ctx: AttestCtx,
             authorization: Annotated[str | None, Header()] = None) -> Any:
    """Operator acknowledgement (policies with ``require_ack``)."""
    _require_operator(ctx, authorization)
    return _guarded("ack", request, operator_acknowledge, ctx, node)


@router.get("/jwks.json")
def attestation_jwks(ctx: AttestCtx) -> dict[str, Any]:
    """The keys attestation results are signed with (verify a node's result token)."""
    if ctx.result_jwks is None:
        raise RuntimeError("attest is wired without result_jwks: nothing serves its keys")
    return ctx.result_jwks(ctx.now())
