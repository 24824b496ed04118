"""Nonce checks: every quote answers a fresh, single-use challenge issued to that node.

A challenge nonce is stateless (issue 15): the service writes nothing when it issues one. It
is 32 bytes, so that a TPM whose largest hash is SHA-256 takes it as ``qualifyingData``
(TPM2B_DATA holds at most ``sizeof(TPMT_HA)``, 34 bytes there)::

    key_id (1) ‖ seq (4) ‖ issued_at (4) ‖ random (7) ‖ mac (16)

- ``key_id``: the first byte of SHA-256 of the challenge key, so that a nonce minted under
  another key (a replica configured with a different key, a rotated key) is told apart in the
  refusal's text; it decides nothing.
- ``seq``: the node's challenge counter when the nonce was issued (low 32 bits). Recording a
  verdict moves the counter on in the same statement that checks it, so a nonce is spent once,
  and every other nonce of the node issued before that verdict is void with it.
- ``issued_at``: Unix seconds; the nonce is fresh for the TTL after it.
- ``mac``: HMAC-SHA256 under the challenge key over a domain label, the node's identity (name,
  EK hash, the time its row was activated: a removed and re-enrolled node of the same name is
  another identity), the PCR selection it was asked to quote, and the first 16 bytes, cut to
  16 bytes. Without the key nobody predicts or forges a nonce, or moves one to another node.

:func:`check_nonce` decides which rule a nonce breaks, from the nonce, the key and the node's
stored identity and counter only: pure, bytes in, verdict out. Step 1 of the checks is fatal
for all that follow: nothing of a nonce whose MAC fails is believed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from attest.core.errors import AttestationError

NONCE_BYTES = 32
KEY_BYTES = 32
SEQ_MODULUS = 1 << 32
_HEAD = struct.Struct(">BII7s")  # key_id, seq, issued_at, random: the 16 bytes the MAC follows
_MAC_BYTES = 16
_LABEL = b"umec challenge nonce v1\x00"


class NonceUnknown(AttestationError):
    check = "nonce.unknown"
    hint = "Request a challenge (POST …/challenge) and quote over its nonce."


class NonceExpired(AttestationError):
    check = "nonce.expired"
    hint = "Quote promptly after the challenge, or check the node's clock and network latency."


class NonceReplayed(AttestationError):
    check = "nonce.replayed"
    hint = "A nonce is single use; request a new challenge for every quote."


class NonceFromTheFuture(AttestationError):
    check = "nonce.clock_future"
    hint = ("The nonce was issued later than now: the server's clock was stepped back since "
            "it was issued. Request a new challenge.")


# Stored times may lie this far ahead of ``now`` (rounding, replicas) before they are invalid.
FUTURE_TOLERANCE = timedelta(seconds=2)


@dataclass(frozen=True)
class NodeIdentity:
    """What a nonce is bound to: one activated row of one machine under one name."""

    name: str
    ek_hash: str
    activated_at: datetime

    def encoded(self) -> bytes:
        at = self.activated_at
        at = at.astimezone(UTC) if at.tzinfo is not None else at
        return json.dumps([self.name, self.ek_hash, at.isoformat()],
                          separators=(",", ":")).encode()


@dataclass(frozen=True)
class ChallengeNonce:
    """The fields of a nonce (not yet authenticated)."""

    key_id: int
    seq: int
    issued_at: int
    mac: bytes


def key_id(key: bytes) -> int:
    return hashlib.sha256(key).digest()[0]


def _selection_bytes(selection: Mapping[str, Sequence[int]]) -> bytes:
    canonical = {bank: sorted(set(pcrs)) for bank, pcrs in selection.items()}
    return json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()


def _mac(key: bytes, head: bytes, node: NodeIdentity,
         selection: Mapping[str, Sequence[int]]) -> bytes:
    if len(key) < KEY_BYTES:
        raise ValueError(f"the challenge key must be at least {KEY_BYTES} bytes")
    message = b"\x00".join((_LABEL, node.encoded(), _selection_bytes(selection), head))
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def mint_nonce(key: bytes, node: NodeIdentity, selection: Mapping[str, Sequence[int]], *,
               seq: int, issued_at: datetime, random: bytes) -> bytes:
    """The nonce of the challenge ``seq`` of ``node``, issued at ``issued_at``."""
    head = _HEAD.pack(key_id(key), seq % SEQ_MODULUS, int(issued_at.timestamp()), random)
    return head + _mac(key, head, node, selection)


def parse_nonce(nonce: bytes) -> ChallengeNonce:
    """The fields of ``nonce``; :class:`NonceUnknown` if it cannot be one of ours."""
    if len(nonce) != NONCE_BYTES:
        raise NonceUnknown(f"this nonce was never issued: it has {len(nonce)} bytes, the "
                           f"service's nonces have {NONCE_BYTES}")
    kid, seq, issued_at, _ = _HEAD.unpack_from(nonce)
    return ChallengeNonce(key_id=kid, seq=seq, issued_at=issued_at,
                          mac=nonce[_HEAD.size:])


def check_nonce(nonce: bytes, *, key: bytes, node: NodeIdentity,
                selection: Mapping[str, Sequence[int]], node_seq: int, now: datetime,
                ttl: timedelta) -> None:
    """Raise the first rule ``nonce`` breaks as evidence of ``node`` at ``now``, whose
    challenge counter is ``node_seq`` and whose policy selects ``selection``.

    1. (fatal) the MAC is the one this key gives for this node and selection: else unknown;
    2. it was not issued after now (beyond the tolerance): a clock step back, not freshness;
    3. it is not older than ``ttl``;
    4. its counter is the node's: else a verdict was recorded since it was issued.
    """
    fields = parse_nonce(nonce)
    if not hmac.compare_digest(fields.mac, _mac(key, nonce[:_HEAD.size], node, selection)):
        raise NonceUnknown(_unknown_detail(fields, key, node))
    issued = datetime.fromtimestamp(fields.issued_at, now.tzinfo)
    if issued > now + FUTURE_TOLERANCE:
        raise NonceFromTheFuture(f"nonce issued at {issued.isoformat()}, after now "
                                 f"({now.isoformat()})")
    if now >= issued + ttl:
        raise NonceExpired(f"nonce expired at {(issued + ttl).isoformat()}")
    if fields.seq != node_seq % SEQ_MODULUS:
        raise NonceReplayed("nonce was already used for a quote, or a newer quote of the "
                            "node was recorded since it was issued")


def _unknown_detail(fields: ChallengeNonce, key: bytes, node: NodeIdentity) -> str:
    if fields.key_id != key_id(key):
        return ("this nonce was not issued by this service's challenge key (replicas must "
                "share keys/challenge-key; a rotated key voids nonces in flight)")
    return (f"this nonce was never issued to node {node.name!r} for its current PCR "
            "selection (another node's, a forged one, one issued before the node was "
            "re-enrolled, or before its policy changed)")
