"""The operator's HTTP routes under ``/attest/v1`` beyond the fleet view of
:mod:`attest.service.api`: remove and rename a node, and manage the appraisal policies (what
``umec nodes …`` and ``umec policy …`` do in remote mode).

Every route first checks the operator's bearer token (:func:`attest.service.api.require_operator`,
401 ``operator.token`` otherwise), then calls the same :mod:`attest.service.operator` function the
CLI's local mode calls, with the server's :class:`AttestContext`: a removal revokes the node's
tokens in its own transaction through the server's change writers. Refusals are problem+json
with their check and hint (:mod:`kernel.problems`); each is counted and logged like a protocol
refusal. Routes are sync ``def`` (they run in the thread pool, see :mod:`attest.service.api`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import BaseModel, Field

from attest.core.policy import POLICY_NAME_PATTERN
from attest.service import operator
from attest.service.api import B64, NodeName, guarded, require_operator
from attest.service.deps import AttestCtx
from attest.service.policies import PolicyTrust

__all__ = ["MAX_POLICY_DOCUMENT", "router"]

# A policy document or its DSSE envelope: PCR values, event digests and an IMA runtime policy
# fit far below this (the /attest/v1 body limit of umec.app is about 1 MiB).
MAX_POLICY_DOCUMENT = 768 << 10
NODE_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
ClassName = Annotated[str, Path(pattern=POLICY_NAME_PATTERN)]
Authorization = Annotated[str | None, Header()]

router = APIRouter(prefix="/attest/v1", tags=["operator"])


class RenameBody(BaseModel):
    name: str = Field(pattern=NODE_PATTERN, description="the node's new name")


class PolicyBody(BaseModel):
    document: str = Field(max_length=MAX_POLICY_DOCUMENT,
                          description="a policy's YAML, or its DSSE envelope (JSON)")


class FromNodeBody(BaseModel):
    node: str = Field(pattern=NODE_PATTERN)
    node_class: str | None = Field(default=None, pattern=POLICY_NAME_PATTERN)
    event_log: B64 | None = None
    ima_list: B64 | None = None


def _trust(ctx: AttestCtx) -> PolicyTrust:
    return PolicyTrust(ctx.config.policy_signers, ctx.config.policy_threshold)


@router.delete("/nodes/{node}")
def remove_node(request: Request, node: NodeName, ctx: AttestCtx,
                authorization: Authorization = None) -> Any:
    """Forget a node (it must enrol again); its tokens are revoked with the removal."""
    require_operator(ctx, authorization)
    return guarded("remove", request, operator.remove_node, ctx, node)


@router.post("/nodes/{node}/rename")
def rename_node(request: Request, node: NodeName, body: RenameBody, ctx: AttestCtx,
                authorization: Authorization = None) -> Any:
    """Give a node's TPM a new name; trusted again after its first passing quote under it."""
    require_operator(ctx, authorization)
    return guarded("rename", request, operator.rename_node, ctx, node, body.name)


@router.get("/policies")
def list_policies(ctx: AttestCtx, authorization: Authorization = None) -> Any:
    """The stored policies, and the built-in default while none of its class is stored."""
    require_operator(ctx, authorization)
    return operator.policy_list(ctx.sessions)


@router.post("/policies")
def set_policy(request: Request, body: PolicyBody, ctx: AttestCtx,
               authorization: Authorization = None) -> Any:
    """Apply a policy (YAML, or the DSSE envelope required when policy signers are set)."""
    require_operator(ctx, authorization)
    return guarded("policy_set", request, operator.apply_policy, ctx.sessions,
                   body.document.encode(), _trust(ctx))


@router.post("/policies/from-node")
def policy_from_node(request: Request, body: FromNodeBody, ctx: AttestCtx,
                     authorization: Authorization = None) -> Any:
    """A draft policy from a trusted node's last quote (and its logs); nothing is applied."""
    require_operator(ctx, authorization)
    return guarded("policy_create", request, operator.draft_from_node, ctx.sessions,
                   body.node, body.node_class, body.event_log, body.ima_list)


@router.get("/policies/{name}")
def show_policy(request: Request, name: ClassName, ctx: AttestCtx,
                authorization: Authorization = None) -> Any:
    """A class's stored policy document (or the built-in default's)."""
    require_operator(ctx, authorization)
    return guarded("policy_show", request, operator.policy_show, ctx.sessions, name)


@router.delete("/policies/{name}")
def remove_policy(request: Request, name: ClassName, ctx: AttestCtx,
                  authorization: Authorization = None) -> Any:
    """Remove a policy no node uses."""
    require_operator(ctx, authorization)
    return guarded("policy_remove", request, operator.remove_policy, ctx.sessions, name)


@router.get("/policies/{name}/history")
def policy_history(name: ClassName, ctx: AttestCtx,
                   authorization: Authorization = None) -> Any:
    """Every version applied to a class, and every refused one."""
    require_operator(ctx, authorization)
    return operator.policy_history(ctx.sessions, name)


@router.get("/policies/{name}/versions/{version}")
def policy_version(request: Request, name: ClassName, version: Annotated[int, Path(ge=0)],
                   ctx: AttestCtx, authorization: Authorization = None) -> Any:
    """The document applied as one version of a class."""
    require_operator(ctx, authorization)
    return guarded("policy_version", request, operator.policy_version, ctx.sessions, name,
                   version)


@router.get("/policies/{name}/rollback")
def policy_rollback(request: Request, name: ClassName, ctx: AttestCtx,
                    to: Annotated[int, Query(ge=0)], authorization: Authorization = None) -> Any:
    """An earlier version's content as a new version, to sign or to apply (nothing applied)."""
    require_operator(ctx, authorization)
    return guarded("policy_rollback", request, operator.rollback_document, ctx.sessions, name,
                   to, _trust(ctx))
