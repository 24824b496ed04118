"""The token-issuance decision for attested workloads, in one place.

:meth:`TokenIssuer.issue` walks the steps below; each failure raises its own
:class:`~mec_api.tokens.errors.TokenRefused` subclass naming the step, and nothing is issued:

1. **Grant.** Either RFC 8693 token exchange (``subject_token`` of type ``…:token-type:jwt``,
   no ``actor_token``, ``requested_token_type`` absent or ``…:access_token``) or the
   ``client_credentials`` grant with the same token as an RFC 7523 ``client_assertion``
   (MEC 009-style clients; a ``client_id`` sent must name the same workload).
2. **Subject.** The projected service-account token verifies against the cluster's issuer keys
   (refreshed once when its ``kid`` is unknown) and names a pod and its node
   (:mod:`mec_api.tokens.sa_token`).
3. **Admission.** The pod (by UID) was admitted by the webhook and not deleted since (no pod
   revocation), the record's namespace and name are the token's, and every image was verified
   (signers recorded for every container).
4. **Node.** The pod's node is ``trusted`` now, its last passing evidence is younger than the
   attestation interval (+ grace) and not dated in the future (a clock step: its age cannot be
   known), and its current trust epoch (read with the state) is above every revoked epoch.
5. **Audience.** ``audience``/``resource`` (default: the first configured) is one of ours.
6. **Scopes.** requested (default: every known scope) ∩ what ``policies/tokens.rego`` grants
   for (namespace, service account); nothing granted is ``invalid_scope``.
7. **DPoP.** When a proof is sent, it must be valid for this request and unseen; the token is
   then bound to its key (``cnf.jkt``, token type ``DPoP``).
8. **Mint.** An ES256 JWT (``typ: at+jwt``, RFC 9068) from the active key of the ring, living
   ``lifetime`` seconds (≤ 300) but never past the subject token's own ``exp``, carrying the
   node's trust epoch (``node_epoch``): a node revocation ends it with no clock compared.

I/O stays outside: the cluster keys, node trust and admission records (one lookup, steps 3
and 4 read together), scope policy, revocations and the clock are all passed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from keys import KeyRing, sign_jwt
from mec_api.scopes import ALL_SCOPES
from mec_api.tokens.dpop import DpopReplayCache, verify_dpop_proof
from mec_api.tokens.errors import (
    ClientAssertionInvalid,
    ClusterKeysUnavailable,
    InvalidRequest,
    NodeNotTrusted,
    PodNotAdmitted,
    ScopeNotGranted,
    SubjectTokenInvalid,
    TokenRefused,
    UnsupportedGrantType,
)
from mec_api.tokens.ledger import IssuanceLog
from mec_api.tokens.revocations import MAX_TOKEN_LIFETIME_SECONDS
from mec_api.tokens.sa_token import (
    SubjectTokenUnknownKey,
    WorkloadIdentity,
    verify_service_account_token,
)
from mec_api.tokens.scope_policy import ScopePolicy, parse_scope
from mec_api.tokens.trust import AdmittedPodView, NodeTrustView, WorkloadLookup
from mec_api.tokens.verified_cache import KidSet, VerifiedCache

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
MAX_LIFETIME_SECONDS = MAX_TOKEN_LIFETIME_SECONDS
SA_TOKEN_LEEWAY = 5.0
# A node's last passing evidence may lie this far after now (rounding) before it is a clock step.
FUTURE_TOLERANCE = timedelta(seconds=2)


class InvalidTarget(TokenRefused):
    error = "invalid_target"
    check = "request.audience"
    hint = "Ask for one of the audiences in the token service's metadata, or none."


class ClusterKeys(Protocol):
    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """The cluster service-account issuer's JWKS (``refresh``: fetch again now)."""


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str
    subject_token: str | None = None
    subject_token_type: str | None = None
    requested_token_type: str | None = None
    actor_token: str | None = None
    client_assertion: str | None = None
    client_assertion_type: str | None = None
    client_id: str | None = None
    scope: str | None = None
    audience: str | None = None
    dpop_proof: str | None = None
    method: str = "POST"
    url: str = ""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    token_type: str            # "Bearer" | "DPoP"
    expires_in: int
    scope: str
    claims: dict[str, Any]

    def response(self, exchange: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": self.access_token, "token_type": self.token_type,
                                "expires_in": self.expires_in, "scope": self.scope}
        if exchange:
            body["issued_token_type"] = TOKEN_TYPE_ACCESS
        return body


@dataclass
class IssuerConfig:
    issuer: str                              # our iss, e.g. https://umec.example/oauth2
    token_endpoint: str                      # the URL DPoP proofs and assertions name
    audiences: Sequence[str]                 # resource-server audiences we mint for
    sa_issuer: str                           # the cluster's service-account issuer
    sa_audiences: Sequence[str]              # audiences a subject token may carry for us
    lifetime_seconds: int = MAX_LIFETIME_SECONDS
    attestation_max_age_seconds: float = 45.0

    def __post_init__(self) -> None:
        if not 0 < self.lifetime_seconds <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"access-token lifetime must be 1..{MAX_LIFETIME_SECONDS} s")
        if not self.audiences or not self.sa_audiences:
            raise ValueError("audiences and sa_audiences must not be empty")


@dataclass
class TokenIssuer:
    config: IssuerConfig
    cluster_keys: ClusterKeys
    # The pod's admission record and its node's trust, read together (steps 3 and 4).
    workloads: WorkloadLookup
    scopes: ScopePolicy
    ring: KeyRing
    # The node's highest revoked trust epoch (the follower's RevocationList.revoked_epoch).
    revoked_epoch: Callable[[str, datetime], int | None]
    # Whether the pod's tokens are revoked (the follower's RevocationList.pod_revoked): a
    # deleted pod mints nothing even if a record of it came back.
    revoked_pod: Callable[[str, datetime], bool]
    replay: DpopReplayCache = field(default_factory=DpopReplayCache)
    # Subject tokens whose signature verified recently (a pod reuses its projected token).
    verified_subjects: VerifiedCache[WorkloadIdentity] = field(default_factory=VerifiedCache)
    _cluster_kids: KidSet = field(default_factory=KidSet)
    # What it issued lately (the operator's view, mec_api.tokens.ledger): claims, not tokens.
    issued: IssuanceLog = field(default_factory=IssuanceLog)

    def issue(self, req: TokenRequest, now: datetime) -> IssuedToken:
        subject, error = self._subject_token(req)
        identity = self._identity(subject, error, now)
        if req.client_id is not None and req.client_id != identity.client_id:
            raise ClientAssertionInvalid(f"client_id {req.client_id!r} is not the workload "
                                         f"{identity.client_id!r} of the assertion")
        workload = self.workloads.workload(identity.node_name, identity.pod_uid)
        digests = self._check_admission(identity, workload.pod, now)
        node = self._check_node(identity, workload.node, now)
        audience = self._audience(req)
        granted = self._scopes(req, identity)
        jkt = self._dpop(req, now)
        token = self._mint(identity, node.epoch, audience, granted, digests, jkt, now)
        self.issued.add(token.claims)
        return token

    # 1. grant -----------------------------------------------------------------------------------
    def _subject_token(self, req: TokenRequest) -> tuple[str, type[SubjectTokenInvalid]]:
        if req.grant_type == TOKEN_EXCHANGE:
            if not req.subject_token or req.subject_token_type not in (TOKEN_TYPE_JWT,
                                                                       TOKEN_TYPE_ID_TOKEN):
                raise InvalidRequest("token exchange needs subject_token and subject_token_type "
                                     f"{TOKEN_TYPE_JWT}")
            if req.actor_token:
                raise InvalidRequest("delegation (actor_token) is not supported")
            if req.requested_token_type not in (None, TOKEN_TYPE_ACCESS):
                raise InvalidRequest(f"requested_token_type must be {TOKEN_TYPE_ACCESS}")
            return req.subject_token, SubjectTokenInvalid
        if req.grant_type == CLIENT_CREDENTIALS:
            if req.client_assertion_type != JWT_BEARER_ASSERTION or not req.client_assertion:
                raise ClientAssertionInvalid(
                    f"client_credentials needs client_assertion_type {JWT_BEARER_ASSERTION} "
                    f"and the service-account token as client_assertion")
            return req.client_assertion, ClientAssertionInvalid
        raise UnsupportedGrantType(f"grant_type {req.grant_type[:100]!r}")

    # 2. subject ---------------------------------------------------------------------------------
    def _identity(self, token: str, error: type[SubjectTokenInvalid],
                  now: datetime) -> WorkloadIdentity:
        audiences = list(self.config.sa_audiences)
        if error is ClientAssertionInvalid:  # RFC 7523: the assertion names the token endpoint
            audiences.append(self.config.token_endpoint)

        def verify(refresh: bool) -> WorkloadIdentity:
            try:
                jwks = self.cluster_keys.jwks(refresh=refresh)
            except Exception as e:  # network, TLS, JSON: the issuer cannot check, so it refuses
                raise ClusterKeysUnavailable(f"{type(e).__name__}: {str(e)[:200]}") from None
            cached = self.verified_subjects.get(f"{error.check}:{token}",
                                                self._cluster_kids.of(jwks))
            if cached is not None:
                if cached.expires_at <= now.timestamp() - SA_TOKEN_LEEWAY:
                    raise error(f"jwt.exp: the subject token expired at {cached.expires_at:.0f}")
                return cached
            identity = verify_service_account_token(
                token, jwks, issuer=self.config.sa_issuer, audiences=audiences,
                now=now.timestamp(), leeway=SA_TOKEN_LEEWAY, error=error)
            self.verified_subjects.put(f"{error.check}:{token}", identity.key_id, identity)
            return identity
        try:
            return verify(False)
        except SubjectTokenUnknownKey:
            try:
                return verify(True)
            except SubjectTokenUnknownKey as e:
                raise error(e.detail) from None

    # 3. admission -------------------------------------------------------------------------------
    def _check_admission(self, who: WorkloadIdentity, record: AdmittedPodView | None,
                         now: datetime) -> list[str]:
        pod = f"pod {who.namespace}/{who.pod_name} (uid {who.pod_uid})"
        if record is None:
            raise PodNotAdmitted(f"{pod} has no admission record")
        if self.revoked_pod(who.pod_uid, now):
            raise PodNotAdmitted(f"{pod} was deleted: its tokens are revoked")
        if (record.namespace, record.name) != (who.namespace, who.pod_name):
            raise PodNotAdmitted(f"{pod}: the admission record is for "
                                 f"{record.namespace}/{record.name}")
        unsigned = [i.path for i in record.images if not i.signers]
        if not record.verified or unsigned or not record.images:
            raise PodNotAdmitted(f"{pod} was admitted without verified signatures"
                                 + (f" for {', '.join(unsigned)}" if unsigned else ""))
        return sorted({i.digest for i in record.images})

    # 4. node ------------------------------------------------------------------------------------
    def _check_node(self, who: WorkloadIdentity, node: NodeTrustView | None,
                    now: datetime) -> NodeTrustView:
        if node is None:
            raise NodeNotTrusted(f"node {who.node_name!r} is not enrolled for attestation")
        if node.state != "trusted":
            raise NodeNotTrusted(f"node {who.node_name!r} is {node.state}")
        _check_evidence_age(who.node_name, node.last_pass_at, now,
                            self.config.attestation_max_age_seconds)
        # The epoch is read in the same query as the trusted state, and every revocation names
        # an epoch that had already ended when it was written, so this holds unless the node
        # table and the feed disagree (a restored backup): then refuse.
        revoked = self.revoked_epoch(who.node_name, now)
        if revoked is not None and node.epoch <= revoked:
            raise NodeNotTrusted(f"node {who.node_name!r}: its trust epoch {node.epoch} is "
                                 f"revoked (up to {revoked})")
        return node

    # 5. audience --------------------------------------------------------------------------------
    def _audience(self, req: TokenRequest) -> str:
        if req.audience is None:
            return self.config.audiences[0]
        if req.audience not in self.config.audiences:
            raise InvalidTarget(f"audience {req.audience[:200]!r} is not served here")
        return req.audience

    # 6. scopes ----------------------------------------------------------------------------------
    def _scopes(self, req: TokenRequest, who: WorkloadIdentity) -> tuple[str, ...]:
        requested = list(parse_scope(req.scope) or sorted(ALL_SCOPES))  # capped: ScopeInvalid
        decision = self.scopes.decide(namespace=who.namespace,
                                      service_account=who.service_account,
                                      node=who.node_name, requested=requested)
        if not decision.granted:
            raise ScopeNotGranted(f"none of {requested} is granted to {who.client_id}")
        return decision.granted

    # 7. DPoP ------------------------------------------------------------------------------------
    def _dpop(self, req: TokenRequest, now: datetime) -> str | None:
        if req.dpop_proof is None:
            return None
        proof = verify_dpop_proof(req.dpop_proof, method=req.method,
                                  url=req.url or self.config.token_endpoint,
                                  now=now.timestamp())
        self.replay.check_and_remember(proof, now.timestamp())
        return proof.jkt

    # 8. mint ------------------------------------------------------------------------------------
    def _mint(self, who: WorkloadIdentity, epoch: int, audience: str, scopes: tuple[str, ...],
              digests: list[str], jkt: str | None, now: datetime) -> IssuedToken:
        iat = int(now.timestamp())
        exp = min(iat + self.config.lifetime_seconds, int(who.expires_at))
        if exp <= iat:
            raise SubjectTokenInvalid("the subject token expires within the second")
        claims: dict[str, Any] = {
            "iss": self.config.issuer, "sub": who.subject, "aud": audience, "iat": iat,
            "nbf": iat, "exp": exp, "jti": uuid.uuid4().hex, "scope": " ".join(scopes),
            "client_id": who.client_id, "namespace": who.namespace,
            "app_instance_id": who.app_instance_id, "node": who.node_name, "node_epoch": epoch,
            "pod": {"name": who.pod_name, "uid": who.pod_uid}, "images": digests}
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        token = sign_jwt(claims, self.ring, headers={"typ": "at+jwt"})
        return IssuedToken(token, "DPoP" if jkt else "Bearer", exp - iat, claims["scope"],
                           claims)


def _check_evidence_age(node: str, last_pass_at: datetime | None, now: datetime,
                        max_age: float) -> None:
    """Passing evidence no older than ``max_age`` and not from the future: a time after now
    means the clock was stepped back since, and the evidence's real age is unknown."""
    if last_pass_at is None:
        raise NodeNotTrusted(f"node {node!r}: no passing evidence yet")
    if last_pass_at > now + FUTURE_TOLERANCE:
        raise NodeNotTrusted(f"node {node!r}: last passing evidence is dated "
                             f"{last_pass_at.isoformat()}, after now ({now.isoformat()}): the "
                             f"server's clock was stepped back; the node's next passing quote "
                             f"fixes this")
    age = (now - last_pass_at).total_seconds()
    if age > max_age:
        raise NodeNotTrusted(f"node {node!r}: last passing evidence {age:.0f} s ago (max "
                             f"{max_age:g} s)")
