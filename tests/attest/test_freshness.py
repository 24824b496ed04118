"""Nonce freshness rules of ``attest.core.freshness.check_nonce``, on their own (issue 9.9).

Over HTTP a replay is also stopped by the conditional UPDATE that consumes the nonce, so the
service tests could not tell whether this module's own replay check worked: mutation testing
removed it and nothing failed. These tests pin each rule, the expiry boundary and the order in
which the failures are named.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from attest.core.errors import AttestationError
from attest.core.freshness import (
    FUTURE_TOLERANCE,
    NonceExpired,
    NonceFromTheFuture,
    NonceRecord,
    NonceReplayed,
    NonceUnknown,
    NonceWrongNode,
    check_nonce,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FRESH = NonceRecord(node="node-a", expires_at=NOW + timedelta(seconds=30), consumed=False)


def failure(record: NonceRecord | None, node: str = "node-a", now: datetime = NOW,
            ttl: timedelta | None = None) -> type[AttestationError] | None:
    try:
        check_nonce(record, node=node, now=now, ttl=ttl)
    except AttestationError as exc:
        assert exc.check.startswith("nonce.")
        return type(exc)
    return None


def test_fresh_nonce_of_this_node_passes() -> None:
    assert failure(FRESH) is None


def test_each_rule() -> None:
    assert failure(None) is NonceUnknown
    assert failure(FRESH, node="node-b") is NonceWrongNode
    assert failure(NonceRecord("node-a", FRESH.expires_at, consumed=True)) is NonceReplayed
    assert failure(FRESH, now=NOW + timedelta(seconds=31)) is NonceExpired


def test_expiry_boundary() -> None:
    # Expired *at* expires_at (kills `now >= expires_at` -> `now > expires_at`).
    assert failure(FRESH, now=FRESH.expires_at) is NonceExpired
    assert failure(FRESH, now=FRESH.expires_at - timedelta(microseconds=1)) is None


@pytest.mark.parametrize(("record", "node", "expected"), [
    # Another node's nonce is named as such even when spent or expired: it says nothing about
    # that nonce's state to the wrong node.
    (NonceRecord("node-b", NOW - timedelta(seconds=1), True), "node-a", NonceWrongNode),
    # A spent nonce is a replay, whether or not it has expired since.
    (NonceRecord("node-a", NOW - timedelta(seconds=1), True), "node-a", NonceReplayed),
])
def test_order_of_the_failures(record: NonceRecord, node: str,
                               expected: type[AttestationError]) -> None:
    assert failure(record, node=node) is expected


def test_expiry_further_ahead_than_the_lifetime_is_a_clock_step() -> None:
    # With ttl, an expiry beyond now + ttl + FUTURE_TOLERANCE means the server's clock was
    # stepped back since the nonce was issued; exactly at the limit is still fine.
    ttl = timedelta(seconds=30)
    limit = NOW + ttl + FUTURE_TOLERANCE
    assert failure(NonceRecord("node-a", limit, False), ttl=ttl) is None
    ahead = NonceRecord("node-a", limit + timedelta(microseconds=1), False)
    assert failure(ahead, ttl=ttl) is NonceFromTheFuture
    assert failure(ahead) is None  # without the lifetime there is nothing to compare with
    # The earlier rules are named first.
    assert failure(NonceRecord("node-a", limit + timedelta(seconds=1), True), ttl=ttl) \
        is NonceReplayed
