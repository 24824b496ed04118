"""kernel.bearer: the one shared-secret bearer check (fleet view, token introspection)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.bearer import bearer_matches

SECRET = "s3cret-operator-token"


@pytest.mark.parametrize(("header", "expected"), [
    (f"Bearer {SECRET}", True),
    (f"bearer {SECRET}", True),          # RFC 7235: the scheme is case-insensitive
    (f"BEARER {SECRET} ", True),
    (f"Bearer {SECRET}x", False),
    (f"Bearer {SECRET[:-1]}", False),
    (f"Basic {SECRET}", False),
    (f"Bearer{SECRET}", False),
    ("Bearer ", False),
    ("", False),
    (None, False),
])
def test_bearer_matches(header: str | None, expected: bool) -> None:
    assert bearer_matches(header, SECRET) is expected


def test_an_empty_configured_secret_matches_nothing() -> None:
    assert bearer_matches("Bearer ", "") is False
    assert bearer_matches("Bearer", "") is False


@given(st.text(max_size=80), st.text(min_size=1, max_size=40))
def test_only_the_scheme_and_the_exact_secret_match(header: str, secret: str) -> None:
    scheme, _, rest = header.partition(" ")
    truth = scheme.lower() == "bearer" and rest.strip() == secret
    assert bearer_matches(header, secret) is truth
