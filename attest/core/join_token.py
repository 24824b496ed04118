"""The k3s join credential, pure (DESIGN protocol step 7; issue 13 section 2).

A node gets a short-lived, per-node Kubernetes bootstrap token, the kind ``k3s token create``
makes and k3s accepts as a join token: a Secret ``bootstrap-token-<id>`` in ``kube-system`` of
type ``bootstrap.kubernetes.io/token`` (:func:`bootstrap_secret`). The node receives it in k3s's
secure format ``K10<sha256 of the cluster CA, hex>::<id>.<secret>`` (:func:`k3s_secure_token`,
parsed back by :func:`parse_k3s_token`), so k3s-agent also authenticates the server it joins.

Sealing (:func:`seal_token` / :func:`open_token`), Keylime's "secure payload" idea: the server
draws a 32-byte secret, wraps it with TPM2_MakeCredential against the node's EK bound to its AK's
Name (:mod:`attest.core.credential`, exactly as activation does), and encrypts the token with
AES-256-GCM under ``HKDF-SHA256(secret, info = "umec k3s join v1" || node name)``, the node name
also being the associated data. Only the TPM that holds that EK, with that AK loaded, recovers
the secret (TPM2_ActivateCredential checks the HMAC over the loaded AK's Name), so only that
node opens the token. The seal carries nothing that an eavesdropper can use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from attest.core.errors import AttestationError

NAMESPACE: Final = "kube-system"
SECRET_TYPE: Final = "bootstrap.kubernetes.io/token"
# What `k3s token create` gives a token by default: k3s's node-join RBAC binds this group.
K3S_NODE_GROUP: Final = "system:bootstrappers:k3s:default-node-token"
ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
TOKEN_ID: Final = re.compile(r"[a-z0-9]{6}")
TOKEN_SECRET: Final = re.compile(r"[a-z0-9]{16}")
_SECURE: Final = re.compile(
    r"K10(?P<ca>[0-9a-f]{64})::(?P<id>[a-z0-9]{6})\.(?P<secret>[a-z0-9]{16})")
SEAL_INFO: Final = b"umec k3s join v1\x00"
SECRET_BYTES: Final = 32
GCM_NONCE: Final = 12
MAX_SEALED: Final = 4096  # a sealed token is ~110 bytes; anything far larger is not ours


class JoinTokenMalformed(AttestationError):
    check = "join.token_format"
    status = 400
    hint = ("A k3s secure token is K10<64 hex of the CA's sha256>::<6 [a-z0-9]>.<16 [a-z0-9]>; "
            "request a new one (umec agent --join).")


class JoinSealBroken(AttestationError):
    check = "join.seal"
    status = 400
    hint = ("The join credential does not open with this TPM's secret: it was sealed for "
            "another node's TPM or altered in transit. Request a new one from this node.")


@dataclass(frozen=True)
class BootstrapToken:
    token_id: str
    token_secret: str
    expires_at: datetime

    @property
    def secret_name(self) -> str:
        return f"bootstrap-token-{self.token_id}"

    @property
    def credentials(self) -> str:
        return f"{self.token_id}.{self.token_secret}"


def _random_string(length: int) -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def verdict_token_id(node: str, verdict_nonce: bytes) -> str:
    """The token id of the one token a verdict may yield: 6 characters of [a-z0-9] derived
    from the node and the nonce of its passing quote. The apiserver refuses a second Secret of
    that name, so a replayed or concurrent request for the same verdict creates nothing."""
    number = int.from_bytes(hashlib.sha256(node.encode() + b"\x00" + verdict_nonce).digest())
    out = []
    for _ in range(6):
        number, digit = divmod(number, len(ID_ALPHABET))
        out.append(ID_ALPHABET[digit])
    return "".join(out)


def new_bootstrap_token(token_id: str, now: datetime, ttl_seconds: float) -> BootstrapToken:
    """A token with a random 16-character secret (kubeadm's alphabet and lengths) expiring
    ``ttl_seconds`` after ``now``."""
    if TOKEN_ID.fullmatch(token_id) is None:
        raise JoinTokenMalformed(f"token id {token_id!r} is not 6 characters of [a-z0-9]")
    return BootstrapToken(token_id, _random_string(16), now + timedelta(seconds=ttl_seconds))


def rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


_RFC3339 = re.compile(r"(?P<at>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d{1,9})?"
                      r"(?P<tz>Z|[+-]\d{2}:\d{2})", re.ASCII)


def object_created_at(raw: bytes) -> datetime | None:
    """``metadata.creationTimestamp`` of a Kubernetes object's JSON (the apiserver's clock, RFC
    3339, whole seconds; a fraction is dropped), timezone-aware; None if the body is not such
    an object or the stamp is not RFC 3339."""
    try:
        obj = json.loads(raw) if len(raw) < 4 << 20 else None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    stamp = meta.get("creationTimestamp") if isinstance(meta, dict) else None
    match = _RFC3339.fullmatch(stamp) if isinstance(stamp, str) else None
    if match is None:
        return None
    tz = "+00:00" if match["tz"] == "Z" else match["tz"]
    try:
        return datetime.fromisoformat(match["at"] + tz)
    except ValueError:  # e.g. month 13, offset +25:00
        return None


def bootstrap_secret(token: BootstrapToken, node: str, labels: dict[str, str],
                     annotations: dict[str, str]) -> dict[str, object]:
    """The Secret k3s and kube-apiserver's bootstrap authenticator read (``data``, base64, as
    the apiserver stores it)."""
    data = {
        "description": f"umec: join token of attested node {node}",
        "token-id": token.token_id, "token-secret": token.token_secret,
        "expiration": rfc3339(token.expires_at),
        "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
        "auth-extra-groups": K3S_NODE_GROUP,
    }
    return {
        "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
        "metadata": {"name": token.secret_name, "namespace": NAMESPACE, "labels": labels,
                     "annotations": annotations},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def ca_hash(ca_pem: bytes) -> str:
    """k3s's CA hash for a self-signed cluster CA: sha256 of the PEM file as stored on disk."""
    return hashlib.sha256(ca_pem).hexdigest()


def k3s_secure_token(ca_sha256: str, token: BootstrapToken) -> str:
    return f"K10{ca_sha256}::{token.credentials}"


def parse_k3s_token(text: str) -> tuple[str, str, str]:
    """(CA sha256 hex, token id, token secret) of a secure token; anything else is refused."""
    match = _SECURE.fullmatch(text) if len(text) < 256 else None
    if match is None:
        raise JoinTokenMalformed(f"not a k3s secure bootstrap token ({len(text)} characters)")
    return match["ca"], match["id"], match["secret"]


def _key(secret: bytes, node: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=SEAL_INFO + node.encode()).derive(secret)


def seal_token(secret: bytes, node: str, token: str, *, nonce: bytes | None = None) -> bytes:
    """AES-256-GCM(nonce || ciphertext) of ``token`` under the key derived from ``secret``."""
    nonce = nonce or secrets.token_bytes(GCM_NONCE)
    return nonce + AESGCM(_key(secret, node)).encrypt(nonce, token.encode(), node.encode())


def open_token(secret: bytes, node: str, sealed: bytes) -> str:
    """The token :func:`seal_token` sealed; :class:`JoinSealBroken` for any other input."""
    if not GCM_NONCE + 16 < len(sealed) <= MAX_SEALED:
        raise JoinSealBroken(f"sealed token of {len(sealed)} bytes")
    try:
        plain = AESGCM(_key(secret, node)).decrypt(sealed[:GCM_NONCE], sealed[GCM_NONCE:],
                                                   node.encode())
    except InvalidTag:
        raise JoinSealBroken("the sealed token does not authenticate under this secret") \
            from None
    try:
        return plain.decode("ascii")
    except UnicodeDecodeError:
        raise JoinSealBroken("the sealed token is not ASCII") from None


__all__ = ["K3S_NODE_GROUP", "NAMESPACE", "SECRET_BYTES", "SECRET_TYPE", "BootstrapToken",
           "JoinSealBroken", "JoinTokenMalformed", "bootstrap_secret", "ca_hash",
           "k3s_secure_token", "new_bootstrap_token", "object_created_at", "open_token",
           "parse_k3s_token",
           "rfc3339", "seal_token", "verdict_token_id"]
