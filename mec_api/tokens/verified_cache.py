"""Signatures already checked: the claims of a token string, kept for a short while.

An app presents the same access token on every call for up to five minutes, and a pod the same
projected service-account token at every exchange; verifying the signature each time is most of
the cost (pyjwt's base64 checks plus ECDSA/RSA). The cache maps the *exact* token string to what
its verification produced. On a hit the caller still checks everything that can change:
the clock (``exp``/``nbf``), that the signing ``kid`` is still published (a key retired after its
overlap stops its tokens at once), revocation, DPoP and scope. Entries live at most ``max_age``
seconds and the cache is bounded (oldest first out).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class VerifiedCache(Generic[V]):
    def __init__(self, max_entries: int = 20_000, max_age: float = 60.0) -> None:
        self.max_entries, self.max_age = max_entries, max_age
        self._entries: OrderedDict[str, tuple[float, str, V]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, token: str, published_kids: frozenset[str]) -> V | None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            stored_at, kid, value = entry
            if time.monotonic() - stored_at > self.max_age or kid not in published_kids:
                del self._entries[token]
                return None
            self.hits += 1
            return value

    def put(self, token: str, kid: str, value: V) -> None:
        with self._lock:
            self._entries[token] = (time.monotonic(), kid, value)
            self._entries.move_to_end(token)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class KidSet:
    """The kids of a JWKS document, recomputed only when the document object changes."""

    def __init__(self) -> None:
        self._doc: Mapping[str, Any] | None = None
        self._kids: frozenset[str] = frozenset()

    def of(self, jwks: Mapping[str, Any]) -> frozenset[str]:
        if jwks is not self._doc:
            keys = jwks.get("keys")
            self._kids = frozenset(str(k.get("kid")) for k in keys if isinstance(k, Mapping)) \
                if isinstance(keys, list) else frozenset()
            self._doc = jwks
        return self._kids
