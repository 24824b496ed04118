"""The operator's (or a resource server's) shared secret in ``Authorization: Bearer <secret>``.

One check for every route that takes such a secret (the fleet view, token introspection): the
scheme compared without regard to case (RFC 7235 §2.1), the secret in constant time, and an
empty configured secret matching nothing (fail closed: a server without a secret has no
operator routes rather than open ones).
"""

from __future__ import annotations

import hmac

from kernel.errors import CheckedError

__all__ = ["OperatorUnauthorized", "bearer_matches", "require_operator_token"]


class OperatorUnauthorized(CheckedError):
    """An operator route without the operator's bearer token (not a protocol refusal: it is
    neither counted nor titled by class)."""

    check = "operator.token"
    status = 401
    hint = ("Send Authorization: Bearer <token> (UMEC_OPERATOR_TOKEN, or the operator-token "
            "file in the server's data directory).")

    def problem_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="umec-operator"'}


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """Whether ``authorization`` is ``Bearer <expected>``."""
    if not expected or not authorization:
        return False
    scheme, _, secret = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(secret.strip().encode(),
                                                               expected.encode())


def require_operator_token(authorization: str | None, expected: str) -> None:
    """Raise :class:`OperatorUnauthorized` unless ``authorization`` carries the operator token."""
    if not bearer_matches(authorization, expected):
        raise OperatorUnauthorized("missing or wrong operator bearer token")
