"""What the token service issued lately, for the operator (issue 14: the dashboard's Tokens
page): the newest :data:`KEEP` tokens' identifying claims (jti, workload, node, epoch, pod, scope,
expiry), in memory, per process. Never the token itself.

In memory on purpose: an access token lives five minutes at most, so which tokens are live is
only worth showing while one can still be used, and a table written on every issuance would put
a commit on the token path. The counts are durable apart from the rows: :meth:`IssuanceLog.add`
also counts per (hour, workload, node), and the token service's background adds those counts to
``token_issuance_counts`` every few seconds (:mod:`mec_api.tokens.issuance_counts`), so the
page's issued counts cover every worker and replica. Live and revoked-while-live are this
process's (the page says so). Revocations are durable (``token_revocations``) and shown from
the store.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

KEEP = 5000

# Why a token is revoked now, or None (RevocationList.revoked's signature, bound to a time).
RevokedWhy = Callable[[Mapping[str, Any]], str | None]
# (hour since the epoch, workload, node) -> tokens issued (mec_api.tokens.issuance_counts).
CountKey = tuple[int, str, str]
# The columns of token_issuance_counts (characters): a longer value is cut, so that one value
# the database would refuse cannot stop every later flush.
WORKLOAD_CHARS = 512
NODE_CHARS = 253


def storable(value: str, limit: int) -> str:
    """``value`` as the database can store it: at most ``limit`` characters, no NUL (refused
    by PostgreSQL in text), no lone surrogate (not encodable as UTF-8)."""
    clean = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return clean[:limit]


class IssuanceLog:
    def __init__(self, keep: int = KEEP) -> None:
        self._rows: deque[dict[str, Any]] = deque(maxlen=keep)
        self._pending: Counter[CountKey] = Counter()
        self._lock = threading.Lock()

    def add(self, claims: Mapping[str, Any]) -> None:
        pod = claims.get("pod") if isinstance(claims.get("pod"), dict) else {}
        row = {"jti": str(claims.get("jti", "")), "workload": str(claims.get("client_id", "")),
               "namespace": str(claims.get("namespace", "")),
               "node": str(claims.get("node", "")), "node_epoch": claims.get("node_epoch"),
               "pod_uid": (pod or {}).get("uid"), "pod": (pod or {}).get("name"),
               "scope": str(claims.get("scope", "")), "iat": claims.get("iat"),
               "exp": claims.get("exp")}
        hour = int(row["iat"]) // 3600 if isinstance(row["iat"], int) else 0
        with self._lock:
            self._rows.append(row)
            self._pending[(hour, storable(str(row["workload"]), WORKLOAD_CHARS),
                           storable(str(row["node"]), NODE_CHARS))] += 1

    def take_counts(self) -> Counter[CountKey]:
        """The counts since the last take, cleared (to be flushed)."""
        with self._lock:
            taken, self._pending = self._pending, Counter()
        return taken

    def pending_counts(self) -> Counter[CountKey]:
        """The counts not flushed yet (a copy)."""
        with self._lock:
            return Counter(self._pending)

    def put_back(self, counts: Counter[CountKey], oldest_hour: int) -> None:
        """Counts whose flush failed: they go with the next one; hours before ``oldest_hour``
        (pruned from the table anyway) are dropped, so a long outage cannot grow them."""
        with self._lock:
            self._pending.update({k: n for k, n in counts.items() if k[0] >= oldest_hour})

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows)


def _group(groups: dict[tuple[str, str], dict[str, Any]],
           key: tuple[str, str]) -> dict[str, Any]:
    return groups.setdefault(key, {"workload": key[0], "node": key[1], "issued_all": 0,
                                   "issued": 0, "live": 0, "revoked": 0, "why": set(),
                                   "last_issued": None})


def per_workload(rows: list[dict[str, Any]], now: float, revoked: RevokedWhy,
                 issued_all: Mapping[tuple[str, str], int] | None = None
                 ) -> list[dict[str, Any]]:
    """Per (workload, node): tokens issued by every process (``issued_all``, from
    ``token_issuance_counts``), issued by this one, still live, and revoked while live (with
    why)."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for key, count in (issued_all or {}).items():
        _group(groups, key)["issued_all"] = count
    for row in rows:
        group = _group(groups, (row["workload"], row["node"]))
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
