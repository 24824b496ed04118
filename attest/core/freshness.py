"""Nonce checks: every quote answers a fresh, single-use challenge issued to that node.

The service stores each nonce with its node and expiry and consumes it atomically; this module
decides, from that record, which of the named failures applies, so the rules live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from attest.core.errors import AttestationError


class NonceUnknown(AttestationError):
    check = "nonce.unknown"
    hint = "Request a challenge (POST …/challenge) and quote over its nonce."


class NonceWrongNode(AttestationError):
    check = "nonce.wrong_node"
    hint = "Each node must quote over a nonce issued to itself; request a new challenge."


class NonceExpired(AttestationError):
    check = "nonce.expired"
    hint = "Quote promptly after the challenge, or check the node's clock and network latency."


class NonceReplayed(AttestationError):
    check = "nonce.replayed"
    hint = "A nonce is single use; request a new challenge for every quote."


class NonceFromTheFuture(AttestationError):
    check = "nonce.clock_future"
    hint = ("The nonce expires further ahead than its lifetime allows: the server's clock was "
            "stepped back since it was issued. Request a new challenge.")


# Stored times may lie this far ahead of ``now`` (rounding, replicas) before they are invalid.
FUTURE_TOLERANCE = timedelta(seconds=2)


@dataclass(frozen=True)
class NonceRecord:
    node: str
    expires_at: datetime
    consumed: bool


def check_nonce(record: NonceRecord | None, *, node: str, now: datetime,
                ttl: timedelta | None = None) -> None:
    """Raise the first failure for using ``record`` as node ``node`` at ``now``.

    With ``ttl`` (the lifetime nonces are issued with), an expiry further ahead than
    ``now + ttl`` is invalid: a time in the future is a clock step, never extra freshness."""
    if record is None:
        raise NonceUnknown("this nonce was never issued")
    if record.node != node:
        raise NonceWrongNode(f"nonce was issued to another node, not {node!r}")
    if record.consumed:
        raise NonceReplayed("nonce was already used for a quote")
    if now >= record.expires_at:
        raise NonceExpired(f"nonce expired at {record.expires_at.isoformat()}")
    if ttl is not None and record.expires_at > now + ttl + FUTURE_TOLERANCE:
        raise NonceFromTheFuture(f"nonce expires at {record.expires_at.isoformat()}, more than "
                                 f"{ttl.total_seconds():g} s after now ({now.isoformat()})")
