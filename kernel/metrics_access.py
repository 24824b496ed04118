"""Who may read ``/metrics`` (``umec server``, ``umec api …``, ``umec webhook``).

The Prometheus text says who is refused for what (check ids per route), how many nodes and
pods there are and how fast tokens are minted: nothing for an anonymous reader. One rule for
every process (docs/decisions.md, "Metrics need a token"):

* a metrics token configured (``UMEC_METRICS_TOKEN``): the request must carry
  ``Authorization: Bearer <token>``, compared in constant time by
  :func:`kernel.bearer.bearer_matches`, from any address, loopback included;
* none configured: only loopback peers (``127.0.0.1/8``, ``::1``, IPv4-mapped loopback) are
  answered, so a development machine's Prometheus still works and nothing is open on a
  network.

Anything else is a 401 :class:`MetricsUnauthorized` (problem+json, ``WWW-Authenticate: Bearer
realm="umec-metrics"``). The peer is the ASGI ``client``: uvicorn replaces it with
``X-Forwarded-For`` only from ``FORWARDED_ALLOW_IPS`` (loopback by default), so a remote peer
cannot claim to be loopback unless that variable trusts it.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import Request
from starlette.responses import Response

from kernel.bearer import bearer_matches
from kernel.errors import CheckedError
from kernel.problems import checked_response

__all__ = ["REALM", "MetricsUnauthorized", "check_metrics_access", "is_loopback",
           "metrics_refusal"]

REALM = "umec-metrics"


class MetricsUnauthorized(CheckedError):
    """``/metrics`` was asked for without the metrics token (or, with none configured, from a
    peer that is not loopback)."""

    check = "metrics.unauthorized"
    status = 401
    hint = ("Send 'Authorization: Bearer <token>' with the value of UMEC_METRICS_TOKEN "
            "(Prometheus: authorization.credentials_file in the scrape config, "
            "deploy/examples/prometheus-scrape.yaml).")

    def problem_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an ASGI client address) is a loopback IP address. Names (TestClient's
    ``testclient``), empty values and anything else that does not parse are not."""
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone id is no address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_metrics_access(authorization: str | None, client_host: str | None,
                         token: str) -> None:
    """Raise :class:`MetricsUnauthorized` unless the request may read the metrics (module doc).
    ``token`` is the configured metrics token, ``""`` when none is."""
    if token:
        if not bearer_matches(authorization, token):
            raise MetricsUnauthorized("/metrics needs 'Authorization: Bearer <metrics token>'; "
                                      "the request has none or a wrong one")
        return
    if not is_loopback(client_host):
        raise MetricsUnauthorized(
            "no metrics token is configured, so /metrics answers loopback clients only",
            hint="Operators: set UMEC_METRICS_TOKEN (deploy/: Secret umec-metrics, key token) "
                 "and give Prometheus the same value with authorization.credentials_file.")


def metrics_refusal(request: Request, token: str) -> Response | None:
    """``None`` when ``request`` may read the metrics, else the 401 problem to answer."""
    try:
        check_metrics_access(request.headers.get("authorization"),
                             request.client.host if request.client else None, token)
    except MetricsUnauthorized as exc:
        return checked_response(exc, request.url.path, request)
    return None
