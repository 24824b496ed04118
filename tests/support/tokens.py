"""Helpers for the token-service and guard tests: a cluster service-account issuer we control
(exactly Kubernetes' projected-token claim layout), DPoP proofs, and in-memory node trust and
admission records behind the token service's Protocols (the SQL-backed adapters are exercised
end to end in tests/test_tokens_e2e.py)."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from keys import KeyKind, KeyRing, PrivateKey, generate_private_key, public_jwk
from keys.jwk import b64url_encode
from mec_api.tokens.trust import AdmittedImageView, AdmittedPodView, NodeTrustView

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_AUDIENCE = "umec"
D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


class ClusterIssuer:
    """The cluster's service-account token signer (RS256, as kube-apiserver's default)."""

    def __init__(self, kind: KeyKind = KeyKind.RSA_2048) -> None:
        self.ring = KeyRing(generate_private_key(kind))
        self.refreshes = 0

    def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        self.refreshes += int(refresh)
        return self.ring.jwks(datetime.now(UTC))

    def token(self, *, namespace: str = "tenant-a", account: str = "app",
              pod: str = "app-1", pod_uid: str = "uid-app-1", node: str = "node-a",
              audience: Any = (SA_AUDIENCE,), issuer: str = SA_ISSUER,
              lifetime: int = 3600, now: float | None = None,
              drop: tuple[str, ...] = (), key: PrivateKey | None = None,
              kid: str | None = None) -> str:
        t = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "aud": list(audience), "exp": t + lifetime, "iat": t, "nbf": t, "iss": issuer,
            "jti": str(uuid.uuid4()), "sub": f"system:serviceaccount:{namespace}:{account}",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": node, "uid": f"uid-{node}"},
                "pod": {"name": pod, "uid": pod_uid},
                "serviceaccount": {"name": account, "uid": f"uid-sa-{account}"},
            }}
        for name in drop:
            if name.startswith("kubernetes.io."):
                claims["kubernetes.io"].pop(name.split(".", 2)[2])
            else:
                claims.pop(name)
        signing = key or self.ring.active.private_key
        alg = "RS256" if key is None or "RSA" in type(key).__name__ else "ES256"
        return jwt.encode(claims, signing, algorithm=alg,
                          headers={"kid": kid or self.ring.active.kid})


@dataclass
class Nodes:
    nodes: dict[str, NodeTrustView] = field(default_factory=dict)

    def set(self, name: str, state: str = "trusted", age: float = 1.0, epoch: int = 1) -> None:
        """``age`` < -1000: last passing evidence ``-age - 1000`` s in the future (clock step)."""
        if age < -1000:
            last: datetime | None = datetime.fromtimestamp(time.time() - age - 1000, UTC)
        else:
            last = datetime.fromtimestamp(time.time() - age, UTC) if age >= 0 else None
        self.nodes[name] = NodeTrustView(name, state, last, epoch)

    def node_trust(self, node: str) -> NodeTrustView | None:
        return self.nodes.get(node)


@dataclass
class Admissions:
    pods: dict[str, AdmittedPodView] = field(default_factory=dict)

    def admit(self, uid: str = "uid-app-1", namespace: str = "tenant-a", name: str = "app-1",
              verified: bool = True, signers: tuple[str, ...] = ("ci",),
              digests: tuple[str, ...] = (D1,)) -> None:
        self.pods[uid] = AdmittedPodView(
            namespace, name, uid, verified,
            tuple(AdmittedImageView(f"spec.containers[{i}]", d, signers)
                  for i, d in enumerate(digests)))

    def admitted_pod(self, uid: str) -> AdmittedPodView | None:
        return self.pods.get(uid)


class DpopKey:
    """A client's DPoP key and its proofs (RFC 9449)."""

    def __init__(self) -> None:
        self.key = generate_private_key()
        self.jwk = public_jwk(self.key)

    def proof(self, method: str, url: str, *, access_token: str | None = None,
              iat: float | None = None, jti: str | None = None, typ: str = "dpop+jwt",
              jwk: dict[str, Any] | None = None) -> str:
        claims: dict[str, Any] = {"jti": jti or uuid.uuid4().hex, "htm": method, "htu": url,
                                  "iat": int(iat if iat is not None else time.time())}
        if access_token is not None:
            claims["ath"] = b64url_encode(hashlib.sha256(access_token.encode()).digest())
        return jwt.encode(claims, self.key, algorithm="ES256",
                          headers={"typ": typ, "jwk": jwk or self.jwk})
