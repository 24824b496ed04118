"""The metrics token the test servers are configured with, and the header that presents it
(``/metrics`` needs it on every process: kernel.metrics_access)."""

from __future__ import annotations

METRICS_TOKEN = "test-metrics-token-0123456789abcdef"


def metrics_auth(token: str = METRICS_TOKEN) -> dict[str, str]:
    """``Authorization: Bearer <token>`` for a ``/metrics`` request."""
    return {"Authorization": f"Bearer {token}"}
