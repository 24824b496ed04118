"""What the token service issued lately, for the operator (issue 14: the dashboard's Tokens
page): the newest :data:`KEEP` tokens' identifying claims (jti, workload, node, epoch, pod, scope,
expiry), in memory, per process. Never the token itself.

In memory on purpose: an access token lives five minutes at most, so "issued" is only worth
showing while a token can still be used, and a table written on every issuance would put a
commit on the token path. The price: each ``umec server`` replica shows what it issued since
it started (the page says so). Revocations are durable (``token_revocations``) and shown from
the store.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

KEEP = 5000

# Why a token is revoked now, or None (RevocationList.revoked's signature, bound to a time).
RevokedWhy = Callable[[Mapping[str, Any]], str | None]


class IssuanceLog:
    def __init__(self, keep: int = KEEP) -> None:
        self._rows: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, claims: Mapping[str, Any]) -> None:
        pod = claims.get("pod") if isinstance(claims.get("pod"), dict) else {}
        row = {"jti": str(claims.get("jti", "")), "workload": str(claims.get("client_id", "")),
               "namespace": str(claims.get("namespace", "")),
               "node": str(claims.get("node", "")), "node_epoch": claims.get("node_epoch"),
               "pod_uid": (pod or {}).get("uid"), "pod": (pod or {}).get("name"),
               "scope": str(claims.get("scope", "")), "iat": claims.get("iat"),
               "exp": claims.get("exp")}
        with self._lock:
            self._rows.append(row)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows)


def per_workload(rows: list[dict[str, Any]], now: float,
                 revoked: RevokedWhy) -> list[dict[str, Any]]:
    """Per (workload, node): tokens issued, still live, and revoked while live (with why)."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["workload"], row["node"])
        group = groups.setdefault(key, {"workload": key[0], "node": key[1], "issued": 0,
                                        "live": 0, "revoked": 0, "why": set(),
                                        "last_issued": None})
        group["issued"] += 1
        group["last_issued"] = max(group["last_issued"] or 0, row["iat"] or 0)
        if not isinstance(row["exp"], int) or row["exp"] <= now:
            continue
        why = revoked(row)
        if why is None:
            group["live"] += 1
        else:
            group["revoked"] += 1
            group["why"].add(why)
    return [{**g, "why": sorted(g["why"])} for _, g in sorted(groups.items())]
