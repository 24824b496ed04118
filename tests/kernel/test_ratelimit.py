"""kernel.ratelimit: token buckets with bounded memory that never forgive a limited client
just because other clients churned through new keys."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kernel.ratelimit import RateLimiter


def test_burst_then_refused_then_refilled() -> None:
    limiter = RateLimiter(rate=2.0, burst=3.0)
    assert [limiter.retry_after("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.retry_after("a", 0.0) == 0.5
    assert limiter.retry_after("a", 0.5) == 0.0


def test_limited_client_survives_eviction_of_idle_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=5.0, max_clients=3)
    for _ in range(5):
        limiter.retry_after("limited", 100.0)
    limiter.retry_after("idle-1", 0.0)
    limiter.retry_after("idle-2", 0.0)  # both refilled by t=100
    assert limiter.retry_after("new", 100.0) == 0.0
    assert "limited" in limiter._buckets and limiter.retry_after("limited", 100.0) > 0


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 1000)), max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(calls: list[tuple[str, float]]) -> None:
    limiter = RateLimiter(rate=1.0, burst=3.0, max_clients=100)
    allowed: dict[str, list[float]] = {}
    for client, t in sorted(calls, key=lambda c: c[1]):
        if limiter.retry_after(client, t) == 0.0:
            allowed.setdefault(client, []).append(t)
    for times in allowed.values():
        assert len(times) <= 3 + (times[-1] - times[0]) * 1.0 + 1e-9


def test_refund_gives_back_one_request_up_to_the_burst() -> None:
    limiter = RateLimiter(rate=0.001, burst=2.0)
    assert limiter.retry_after("a", 0.0) == 0.0
    assert limiter.retry_after("a", 0.0) == 0.0
    assert limiter.retry_after("a", 0.0) > 0
    limiter.refund("a")
    assert limiter.retry_after("a", 0.0) == 0.0
    for _ in range(5):
        limiter.refund("a")
    assert [limiter.retry_after("a", 0.0) == 0.0 for _ in range(3)] == [True, True, False]
