"""Kubernetes projected service-account tokens: the subject of every token exchange.

A pod's projected token (``serviceAccountToken`` volume) is a JWT signed by the cluster's
service-account issuer. Its claims (Kubernetes ≥ 1.30, node info on by default)::

    {"iss": "https://kubernetes.default.svc.cluster.local", "aud": ["umec"],
     "sub": "system:serviceaccount:<ns>:<sa>", "exp": …, "iat": …, "nbf": …, "jti": …,
     "kubernetes.io": {"namespace": "<ns>",
                       "serviceaccount": {"name": "<sa>", "uid": …},
                       "pod": {"name": …, "uid": …}, "node": {"name": …, "uid": …}}}

:func:`verify_service_account_token` checks, in order: signature by a key of the cluster JWKS
(pinned RS256/ES256, key chosen by ``kid`` only), ``iss``, ``aud`` (one of ours), ``exp``/
``nbf``/``iat`` against the injected clock, then that the token is bound to a pod and a node and
that ``sub`` agrees with the ``kubernetes.io`` claims. Legacy Secret-based tokens (no ``exp``, no
pod) are refused: they never expire and say nothing about where the workload runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keys import JwtInvalid, JwtUnknownKid, verify_jwt
from mec_api.tokens.errors import SubjectIdentityIncomplete, SubjectTokenInvalid

SA_TOKEN_ALGORITHMS = ("RS256", "ES256")


class SubjectTokenUnknownKey(SubjectTokenInvalid):
    check = "subject.token_key"


@dataclass(frozen=True)
class WorkloadIdentity:
    """The verified identity of a pod, from its service-account token."""

    subject: str            # system:serviceaccount:<ns>:<sa>
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str
    expires_at: float
    key_id: str             # kid of the cluster key that verified the token

    @property
    def client_id(self) -> str:
        return f"{self.namespace}:{self.service_account}"

    @property
    def app_instance_id(self) -> str:
        # One MEC application instance per (namespace, service account): stable across pod
        # restarts and never shared between tenants (namespaces).
        return f"{self.namespace}.{self.service_account}"


def _text(obj: Any, *path: str) -> str:
    value = obj
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    if not isinstance(value, str) or not value:
        raise SubjectIdentityIncomplete(f"claim kubernetes.io.{'.'.join(path)} is missing")
    return value


def _expiry(exp: int | float, error: type[SubjectTokenInvalid]) -> float:
    """``exp`` (a NumericDate, checked current) as a float; an integer past any float is typed."""
    try:
        return float(exp)
    except OverflowError:
        raise error(f"jwt.exp: {str(exp)[:24]}... is no date (too large)") from None


def verify_service_account_token(
        token: str, jwks: Mapping[str, Any], *, issuer: str, audiences: Sequence[str],
        now: float, leeway: float = 5.0,
        error: type[SubjectTokenInvalid] = SubjectTokenInvalid) -> WorkloadIdentity:
    """The workload a projected service-account token names (steps in the module doc)."""
    try:
        verified = verify_jwt(token, jwks, algorithms=SA_TOKEN_ALGORITHMS, issuer=issuer,
                              audience=list(audiences), now=now, leeway=leeway,
                              required_claims=("exp", "iat", "iss", "sub", "aud"))
    except JwtUnknownKid as e:
        # The cluster may have rotated its signing key: the caller refreshes the JWKS once.
        raise SubjectTokenUnknownKey(f"{e.check}: {e.detail}") from None
    except JwtInvalid as e:
        raise error(f"{e.check}: {e.detail}") from None
    claims = verified.claims
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, Mapping):
        raise SubjectIdentityIncomplete("no kubernetes.io claim: not a projected token")
    namespace = _text(k8s, "namespace")
    account = _text(k8s, "serviceaccount", "name")
    identity = WorkloadIdentity(
        subject=f"system:serviceaccount:{namespace}:{account}", namespace=namespace,
        service_account=account, pod_name=_text(k8s, "pod", "name"),
        pod_uid=_text(k8s, "pod", "uid"), node_name=_text(k8s, "node", "name"),
        expires_at=_expiry(claims["exp"], error), key_id=verified.kid)
    if claims.get("sub") != identity.subject:
        raise SubjectIdentityIncomplete(
            f"sub {claims.get('sub')!r} does not match kubernetes.io ({identity.subject})")
    return identity
