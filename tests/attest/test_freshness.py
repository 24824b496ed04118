"""The stateless challenge nonce of ``attest.core.freshness``, on its own (issues 9.9 and 15).

Over HTTP a replay is also stopped by the conditional UPDATE that moves the node's challenge
counter, so the service tests could not tell whether this module's own checks worked. These
tests pin each rule, the boundaries and the order in which failures are named, and hypothesis
drives the parser and the MAC with arbitrary bytes.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest.core.errors import AttestationError
from attest.core.freshness import (
    FUTURE_TOLERANCE,
    NONCE_BYTES,
    SEQ_MODULUS,
    NodeIdentity,
    NonceExpired,
    NonceFromTheFuture,
    NonceReplayed,
    NonceUnknown,
    check_nonce,
    mint_nonce,
    parse_nonce,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)
KEY = bytes(range(32))
NODE = NodeIdentity("node-a", "ab" * 32, datetime(2025, 12, 1, 8, 30, 0, 123456, tzinfo=UTC))
SELECTION = {"sha256": [0, 1, 2, 3, 7, 14]}


def mint(seq: int = 5, at: datetime = NOW, node: NodeIdentity = NODE, key: bytes = KEY,
         selection: dict[str, list[int]] | None = None) -> bytes:
    return mint_nonce(key, node, selection or SELECTION, seq=seq, issued_at=at,
                      random=os.urandom(7))


def failure(nonce: bytes, *, now: datetime = NOW, node: NodeIdentity = NODE, seq: int = 5,
            key: bytes = KEY, selection: dict[str, list[int]] | None = None
            ) -> AttestationError | None:
    try:
        check_nonce(nonce, key=key, node=node, selection=selection or SELECTION, node_seq=seq,
                    now=now, ttl=TTL)
    except AttestationError as exc:
        assert exc.check.startswith("nonce.")
        return exc
    return None


def kind(nonce: bytes, **kwargs: object) -> type[AttestationError] | None:
    found = failure(nonce, **kwargs)  # type: ignore[arg-type]
    return None if found is None else type(found)


def test_a_fresh_nonce_of_this_node_passes() -> None:
    nonce = mint()
    assert len(nonce) == NONCE_BYTES == 32  # fits TPM2B_DATA of a SHA-256-only TPM (34)
    assert failure(nonce) is None


def test_each_rule() -> None:
    assert kind(os.urandom(32)) is NonceUnknown
    assert kind(mint(), seq=6) is NonceReplayed  # a verdict was recorded since
    assert kind(mint(), now=NOW + TTL) is NonceExpired
    assert kind(mint(at=NOW + FUTURE_TOLERANCE + timedelta(seconds=1))) is NonceFromTheFuture


@pytest.mark.parametrize("other", [
    NodeIdentity("node-b", NODE.ek_hash, NODE.activated_at),          # another node's
    NodeIdentity("node-a", "cd" * 32, NODE.activated_at),             # another machine's
    NodeIdentity("node-a", NODE.ek_hash, NODE.activated_at + timedelta(microseconds=1)),
])
def test_a_nonce_is_bound_to_one_node_identity(other: NodeIdentity) -> None:
    """Another node's nonce, or one issued before the name was removed and enrolled again
    (a new activated_at), is unknown to this node."""
    exc = failure(mint(node=other))
    assert isinstance(exc, NonceUnknown) and "never issued to node 'node-a'" in exc.detail


def test_a_nonce_is_bound_to_its_selection_and_key() -> None:
    assert kind(mint(), selection={"sha256": [0, 1, 2, 3, 7]}) is NonceUnknown  # policy changed
    assert failure(mint(), selection={"sha256": [14, 7, 3, 2, 1, 0, 0]}) is None  # same set
    exc = failure(mint(key=bytes(32)))
    assert isinstance(exc, NonceUnknown) and "challenge key" in exc.detail


def test_every_flipped_bit_is_refused() -> None:
    nonce = mint()
    for i in range(len(nonce) * 8):
        bad = bytearray(nonce)
        bad[i // 8] ^= 1 << (i % 8)
        assert kind(bytes(bad)) is NonceUnknown, i


def test_expiry_and_future_boundaries() -> None:
    nonce = mint()
    assert kind(nonce, now=NOW + TTL) is NonceExpired  # expired *at* issued_at + ttl
    assert failure(nonce, now=NOW + TTL - timedelta(microseconds=1)) is None
    assert failure(nonce, now=NOW - FUTURE_TOLERANCE) is None  # at the tolerance: fine
    assert kind(nonce, now=NOW - FUTURE_TOLERANCE - timedelta(microseconds=1)) \
        is NonceFromTheFuture


def test_order_of_the_failures() -> None:
    # Nothing of a nonce whose MAC fails is believed: a forged one is unknown whatever its
    # fields say; a spent nonce that expired since is named expired (it is dead either way).
    forged = bytearray(mint(seq=4, at=NOW - TTL))
    forged[-1] ^= 1
    assert kind(bytes(forged)) is NonceUnknown
    assert kind(mint(seq=4, at=NOW - TTL)) is NonceExpired
    assert kind(mint(seq=4, at=NOW + timedelta(seconds=5))) is NonceFromTheFuture


def test_the_counter_wraps_with_the_node_counter() -> None:
    assert failure(mint(seq=SEQ_MODULUS + 5), seq=SEQ_MODULUS + 5) is None
    assert kind(mint(seq=5), seq=SEQ_MODULUS + 6) is NonceReplayed


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint(key=b"k" * 16)


@given(st.binary(max_size=80))
def test_any_bytes_are_refused_as_unknown(data: bytes) -> None:
    """Arbitrary bytes never pass and never raise anything but a typed nonce error."""
    exc = failure(data)
    assert isinstance(exc, NonceUnknown)


@given(st.binary(min_size=32, max_size=32))
def test_the_parser_reads_every_32_byte_string(data: bytes) -> None:
    fields = parse_nonce(data)
    assert fields.key_id == data[0] and fields.mac == data[16:]
    assert 0 <= fields.seq < SEQ_MODULUS and fields.issued_at >= 0


@given(st.integers(min_value=0, max_value=2**63 - 1),
       st.integers(min_value=0, max_value=4_000_000_000))
def test_minted_nonces_pass_for_any_counter_and_time(seq: int, at: int) -> None:
    issued = datetime.fromtimestamp(at, UTC)
    assert failure(mint(seq=seq, at=issued), seq=seq, now=issued) is None
