"""The operator's (or a resource server's) shared secret in ``Authorization: Bearer <secret>``.

One check for every route that takes such a secret (the fleet view, token introspection): the
scheme compared without regard to case (RFC 7235 §2.1), the secret in constant time, and an
empty configured secret matching nothing (fail closed: a server without a secret has no
operator routes rather than open ones).
"""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """Whether ``authorization`` is ``Bearer <expected>``."""
    if not expected or not authorization:
        return False
    scheme, _, secret = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(secret.strip().encode(),
                                                               expected.encode())
