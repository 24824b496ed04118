"""Rate limits of the credential-less protocol routes (per source address, challenges per node).

Anyone can call the protocol routes (TPM proofs authenticate nodes), so each is limited per
source address, and challenges also per node name. One :class:`Limits` lives on each
:class:`~attest.service.context.AttestContext` (``ctx.limits``), built from its configuration.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Protocol

from attest.core.errors import AttestationError
from kernel.ratelimit import RateLimiter

if TYPE_CHECKING:  # context.py builds the Limits of each context: no import cycle at run time
    from attest.service.context import AttestConfig


class RateLimited(AttestationError):
    check = "rate.limited"
    status = 429
    hint = ("Too many protocol requests from this source or for this node; retry after the "
            "Retry-After seconds. An agent needs one challenge per attestation interval.")

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def problem_headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


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


class HasConfig(Protocol):
    @property
    def config(self) -> AttestConfig: ...


class Limits:
    """Token buckets for the credential-less protocol routes; ``ctx`` is anything with the
    ``config`` (an :class:`AttestContext`)."""

    def __init__(self, ctx: HasConfig) -> None:
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
