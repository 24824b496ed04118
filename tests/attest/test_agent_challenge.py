"""The agent's reading of a challenge in a server's answer (attest.agent.parse_challenge): any
JSON value is either a usable challenge or None, never an exception, and a challenge is held
only for its lifetime less the margin."""

from __future__ import annotations

import base64
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from attest.agent import (
    HELD_CHALLENGE_MARGIN_SECONDS,
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    parse_challenge,
)

NONCE = base64.b64encode(bytes(range(32))).decode()
GOOD = {"nonce": NONCE, "selection": {"sha256": [0, 1, 2, 3, 7, 14]},
        "expires_at": "2026-12-08T03:00:00+00:00", "expires_in": 59.4}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12)


def test_a_good_answer_is_held_for_its_lifetime_less_the_margin() -> None:
    challenge = parse_challenge(GOOD, received=1000.0)
    assert challenge is not None and challenge.nonce == bytes(range(32))
    assert challenge.selection == {"sha256": [0, 1, 2, 3, 7, 14]}
    assert challenge.usable_until == 1000.0 + 59.4 - HELD_CHALLENGE_MARGIN_SECONDS


def test_nonces_of_16_to_64_bytes_are_taken() -> None:
    for size in (16, 64):
        raw = {**GOOD, "nonce": base64.b64encode(bytes(size)).decode()}
        challenge = parse_challenge(raw, received=0.0)
        assert challenge is not None and challenge.nonce == bytes(size)


def test_without_a_lifetime_it_is_for_immediate_use_only() -> None:
    for expires_in in (None, "59", True, math.inf, math.nan, 10**400, -5):
        raw: dict[str, Any] = {**GOOD, "expires_in": expires_in}
        challenge = parse_challenge(raw, received=1000.0)
        assert challenge is not None and challenge.usable_until < 1000.0


def test_what_is_not_a_challenge_is_none() -> None:
    short, long = (base64.b64encode(bytes(n)).decode() for n in (15, 65))
    bad = [None, [], "x", {**GOOD, "nonce": short}, {**GOOD, "nonce": long},
           {**GOOD, "nonce": "!!!!"}, {**GOOD, "nonce": NONCE[:-1]},
           {**GOOD, "nonce": 5}, {**GOOD, "selection": {"sha256": ["0"]}},
           {**GOOD, "selection": {"sha256": [True]}}, {**GOOD, "selection": []},
           {k: v for k, v in GOOD.items() if k != "selection"}]
    assert [parse_challenge(raw, received=0.0) for raw in bad] == [None] * len(bad)


@given(json_values, st.dictionaries(st.sampled_from(["nonce", "selection", "expires_in"]),
                                    json_values))
def test_any_json_is_a_challenge_or_none(value: Any, overrides: dict[str, Any]) -> None:
    for raw in (value, {**GOOD, **overrides}):
        challenge = parse_challenge(raw, received=0.0)
        if challenge is not None:
            assert MIN_NONCE_BYTES <= len(challenge.nonce) <= MAX_NONCE_BYTES
            assert isinstance(challenge.selection, dict)
            assert challenge.usable_until == challenge.usable_until  # never NaN
