"""The dashboard's session: a signed cookie, its CSRF token, and the login's own CSRF cookie.

The cookie is ``<sid>.<expires>.<mac>``: a random session id (never the operator token), its
expiry (Unix seconds) and an HMAC-SHA256 over both, keyed by a key derived from the operator
token. Nothing is stored server-side, so every worker and replica accepts a session another
issued, and changing the operator token ends every session at once (the key changes). The CSRF
token of a session is an HMAC of its id under the same key (per session, not stored). Logging
out clears the cookie; a copied cookie stays valid until it expires (``SESSION_SECONDS``), which
is why the lifetime is short (docs/decisions.md, "Issue 14: the dashboard").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from kernel.errors import CheckedError

SESSION_COOKIE = "umec_ui_session"
LOGIN_COOKIE = "umec_ui_login"          # the login form's double-submit CSRF value
SESSION_SECONDS = 8 * 3600
FUTURE_TOLERANCE_SECONDS = 60  # a replica's clock may be this far behind the one that issued
_KEY_LABEL = b"umec-ui-session-v1"
_TOKEN = r"[A-Za-z0-9_-]{22,64}"
_COOKIE = re.compile(rf"({_TOKEN})\.([0-9]{{1,12}})\.([A-Za-z0-9_-]{{43}})")


class UiRefused(CheckedError):
    """A dashboard request refused (family base; HTML pages render it, /ui/api answers JSON)."""

    problem_namespace = "urn:umec:ui:"


class UiNotFound(UiRefused):
    check = "ui.route"
    status = 404
    hint = "Start from the fleet page (/ui/)."


class NotLoggedIn(UiRefused):
    check = "ui.session"
    status = 401
    hint = "Log in at /ui/login with the operator token."


class WrongToken(UiRefused):
    check = "ui.login"
    status = 401
    hint = ("Enter the operator token (UMEC_OPERATOR_TOKEN, or the operator-token file in the "
            "server's data directory).")


class CsrfRefused(UiRefused):
    check = "ui.csrf"
    status = 403
    hint = "Reload the page and submit the form again (its CSRF token is missing or stale)."


class LoginRateLimited(UiRefused):
    check = "ui.login_rate"
    status = 429
    hint = "Wait a few seconds before trying again."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def session_key(operator_token: str) -> bytes:
    """The key sessions are signed with; empty when there is no operator token (no sessions)."""
    if not operator_token:
        return b""
    return hmac.new(operator_token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class UiSession:
    sid: str
    expires: int


def issue(key: bytes, now: float, seconds: int = SESSION_SECONDS) -> tuple[UiSession, str]:
    """A new session and its cookie value."""
    session = UiSession(_b64(secrets.token_bytes(24)), int(now) + seconds)
    body = f"{session.sid}.{session.expires}"
    return session, f"{body}.{_mac(key, 's:' + body)}"


def parse(value: str | None, key: bytes, now: float,
          lifetime: int = SESSION_SECONDS) -> UiSession | None:
    """The session a cookie value names, or None: malformed, forged, expired, or expiring
    later than a session issued now could (issued while the clock was stepped ahead)."""
    if not key or not value:
        return None
    match = _COOKIE.fullmatch(value)
    if match is None:
        return None
    sid, expires, mac = match.groups()
    if not hmac.compare_digest(mac, _mac(key, f"s:{sid}.{expires}")):
        return None
    if int(expires) <= now:
        return None
    if int(expires) > now + lifetime + FUTURE_TOLERANCE_SECONDS:
        return None  # issued on a clock that ran ahead: it would outlive its 8 hours
    return UiSession(sid, int(expires))


def csrf_token(key: bytes, session: UiSession) -> str:
    """The session's CSRF token (the hidden field of every form it is shown)."""
    return _mac(key, "csrf:" + session.sid)


def check_csrf(expected: str | None, sent: object) -> None:
    """Raise :class:`CsrfRefused` unless the form sent exactly the expected token."""
    if not expected or not isinstance(sent, str) or not sent:
        raise CsrfRefused("the form carries no CSRF token, or there is nothing to compare it "
                          "with")
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused("the form's CSRF token does not match this session's")


def login_nonce() -> str:
    """The login form's CSRF value (the same in its cookie and its hidden field)."""
    return _b64(secrets.token_bytes(24))


def valid_login_nonce(value: str | None) -> str | None:
    """The login cookie's value if it has the shape :func:`login_nonce` makes."""
    return value if value is not None and re.fullmatch(_TOKEN, value) else None
