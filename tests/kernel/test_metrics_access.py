"""kernel.metrics_access: who may read /metrics (the HTTP behaviour of the three processes is
in tests/umec/test_metrics_access.py)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.bearer import bearer_matches
from kernel.metrics_access import MetricsUnauthorized, check_metrics_access, is_loopback

TOKEN = "metrics-token-for-the-kernel-test"


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::1%lo", True),
    ("::ffff:127.0.0.1", True),                  # a dual-stack socket's IPv4 loopback peer
    ("10.0.0.1", False), ("192.0.2.2", False), ("0.0.0.0", False), ("::", False),
    ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False), ("fd00::2", False),
    ("testclient", False),                       # FastAPI's TestClient
    ("localhost", False),                        # a name is not an address
    (" 127.0.0.1", False), ("127.0.0.1 ", False), ("127.1", False),
    ("", False), (None, False),
])
def test_is_loopback(host: str | None, expected: bool) -> None:
    assert is_loopback(host) is expected


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_an_ipv4_address_is_loopback_exactly_in_127_0_0_0_8(n: int) -> None:
    address = ipaddress.IPv4Address(n)
    assert is_loopback(str(address)) is (n >> 24 == 127)
    assert is_loopback(f"::ffff:{address}") is (n >> 24 == 127)


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_an_ipv6_address_is_loopback_only_as_1_or_mapped_127(n: int) -> None:
    address = ipaddress.IPv6Address(n)
    mapped = address.ipv4_mapped
    expected = n == 1 or (mapped is not None and mapped.is_loopback)
    assert is_loopback(str(address)) is expected


@given(st.text(max_size=60))
def test_any_text_is_answered_and_only_addresses_are_loopback(host: str) -> None:
    if is_loopback(host):
        ipaddress.ip_address(host.split("%", 1)[0])   # parses: never a name or garbage


def refused(authorization: str | None, host: str | None, token: str) -> MetricsUnauthorized:
    with pytest.raises(MetricsUnauthorized) as caught:
        check_metrics_access(authorization, host, token)
    return caught.value


def test_with_a_token_only_that_token_opens_metrics_from_anywhere() -> None:
    check_metrics_access(f"Bearer {TOKEN}", "192.0.2.7", TOKEN)
    check_metrics_access(f"bearer {TOKEN}", "127.0.0.1", TOKEN)
    for header in (None, "", "Bearer ", "Bearer", f"Bearer {TOKEN}x", f"Basic {TOKEN}",
                   f"Bearer {TOKEN[:-1]}"):
        for host in ("127.0.0.1", "192.0.2.7", None):
            err = refused(header, host, TOKEN)
            assert err.check == "metrics.unauthorized" and err.status == 401
            assert err.problem_headers() == {"WWW-Authenticate": 'Bearer realm="umec-metrics"'}
            assert "UMEC_METRICS_TOKEN" in err.hint and "credentials_file" in err.hint


def test_without_a_token_only_loopback_peers_read_metrics() -> None:
    check_metrics_access(None, "127.0.0.1", "")
    check_metrics_access(None, "::1", "")
    for header in (None, "Bearer ", "Bearer", "Bearer anything"):
        for host in ("192.0.2.7", "testclient", "", None):
            err = refused(header, host, "")
            assert err.check == "metrics.unauthorized"
            assert "UMEC_METRICS_TOKEN" in err.hint


@given(st.one_of(st.none(), st.text(max_size=60)), st.one_of(st.none(), st.text(max_size=40)),
       st.sampled_from(["", TOKEN]))
def test_allowed_exactly_by_the_token_or_else_by_loopback(header: str | None,
                                                          host: str | None, token: str) -> None:
    expected = bearer_matches(header, token) if token else is_loopback(host)
    try:
        check_metrics_access(header, host, token)
    except MetricsUnauthorized:
        assert not expected
    else:
        assert expected
