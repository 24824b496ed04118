"""The checked error: the one base of every error µMEC raises on purpose.

A :class:`CheckedError` names the check that failed and says what to do:

* ``check``: a stable dotted id (``quote.nonce``) used in verdicts, logs, metrics and answers;
* ``detail``: what was wrong, with the offending value;
* ``hint``: what to do next;
* ``status``: the HTTP status a route answers with when the error leaves it.

``check``, ``hint`` and ``status`` are class defaults a subclass sets once; ``check`` and
``hint`` may be given per instance (``CheckedError(detail, check=…, hint=…)``), ``status`` only
by the few classes whose status is decided per instance (a plain HTTP problem, a request
refused before its route). ``str(err)`` reads ``<check>: <detail>`` unless a family words it
otherwise (:meth:`message`).

How an error reads on the wire is decided here, per family, and rendered once by
:mod:`kernel.problems` (RFC 9457 problem+json); that module's handler takes the status from the
error itself, so no route maps errors to statuses. Nothing here imports a web framework.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

__all__ = ["CheckedError", "reason_phrase"]


def reason_phrase(status: int) -> str:
    """The status's reason phrase (``404`` → ``Not Found``), ``Error`` for an unknown one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class CheckedError(Exception):
    """A named check failed (see the module doc)."""

    check: str = "checked"
    hint: str = "See the detail."
    status: int = 500
    # The problem ``type`` is this prefix and the check (a family may name its own prefix).
    problem_namespace: ClassVar[str] = "urn:umec:"
    # Whether the problem's ``title`` and its ``error`` member are the class name (attestation
    # and admission errors, as their clients have always read them) instead of the reason phrase.
    class_named: ClassVar[bool] = False
    # Whether ``detail`` and ``hint`` are written for the requester. False for errors about
    # the server's own files and setup: a route that lets one escape answers the generic 500
    # (kernel.problems) and only the log has the detail.
    public: ClassVar[bool] = True

    def __init__(self, detail: str, *, check: str | None = None,
                 hint: str | None = None) -> None:
        if check is not None:
            self.check = check
        if hint is not None:
            self.hint = hint
        self.detail = detail
        super().__init__(self.message())

    def message(self) -> str:
        """What ``str(err)`` reads (called once, by ``__init__``)."""
        return f"{self.check}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        """The error as a JSON object (verdicts, logs, admission answers)."""
        return {"check": self.check, "error": type(self).__name__, "detail": self.detail,
                "hint": self.hint}

    # How a client sees the error: kernel.problems renders these in one place.

    def problem_type(self) -> str:
        return self.problem_namespace + self.check

    def problem_title(self) -> str:
        return type(self).__name__ if self.class_named else reason_phrase(self.status)

    def problem_detail(self) -> str:
        return self.detail

    def problem_extra(self) -> dict[str, Any]:
        """Members added to the problem object beside the standard ones."""
        return {"error": type(self).__name__} if self.class_named else {}

    def problem_headers(self) -> dict[str, str]:
        """Headers the answer carries (``Retry-After``, ``WWW-Authenticate``, ``Allow``)."""
        return {}
