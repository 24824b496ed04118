"""What the token service's routes need, as ``app.state.tokens``, and its dependency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from kernel.coalesce import CoalescedRead
from kernel.ratelimit import RateLimiter
from mec_api.deps import app_state
from mec_api.tokens.feed_mirror import FeedMirror, FeedView
from mec_api.tokens.issuer import TokenIssuer
from mec_api.tokens.revocations import RevocationList, RevocationStore

# RFC 7009 revocations per workload (client_id): a holder revoking in a loop would grow the
# set every resource server reads.
REVOKE_RATE_PER_WORKLOAD = 2.0
REVOKE_BURST_PER_WORKLOAD = 20.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def default_revoke_limiter() -> RateLimiter:
    return RateLimiter(REVOKE_RATE_PER_WORKLOAD, REVOKE_BURST_PER_WORKLOAD)


@dataclass
class TokenRoutes:
    """The issuer, the revocation store, the resource-server credential that introspection
    takes, the clock, the RFC 7009 limiter, and the revocation feed's mirror (concurrent
    callers of the feed share one read: :class:`kernel.coalesce.CoalescedRead`)."""

    issuer: TokenIssuer
    store: RevocationStore
    operator_token: str
    clock: Callable[[], datetime] = utc_now
    revoke_limiter: RateLimiter = field(default_factory=default_revoke_limiter)
    # The operator's key rotation (mec_api.tokens.keyring.KeyRotator): the overlap in seconds
    # in, the new active kid out. None where this process does not hold the key directory.
    rotate_key: Callable[[float], str] | None = None
    # This process's followed revocation list (held on the monotonic clock): introspection and
    # RFC 7009 consult it as well as the store, so a store pruned on a clock that ran ahead
    # does not make a revoked token active again.
    revocations: RevocationList | None = None
    mirror: FeedMirror = field(init=False)
    feed: CoalescedRead[FeedView] = field(init=False)

    def __post_init__(self) -> None:
        self.mirror = FeedMirror(self.store, self.clock)
        self.feed = CoalescedRead(self.mirror.refresh)


async def token_routes(request: Request) -> TokenRoutes:
    return app_state(request, "tokens", TokenRoutes)


Tokens = Annotated[TokenRoutes, Depends(token_routes)]
