"""Typed failures of attestation checks.

Every verification step raises a subclass of :class:`AttestationError`. The class name says which
check failed, ``check`` is a stable dotted identifier used in verdicts, logs and the API, ``detail``
names the offending value and ``hint`` tells the operator what to do next. Nothing here carries a
stack trace to a client: adapters turn these into ``{"check", "detail", "hint"}`` objects.
"""

from __future__ import annotations

from typing import ClassVar


class AttestationError(Exception):
    """A named attestation check failed."""

    check: ClassVar[str] = "attestation"
    hint: ClassVar[str] = "Inspect the node and its evidence; re-run the agent once fixed."

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.check}: {detail}")
        self.detail = detail

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "error": type(self).__name__, "detail": self.detail,
                "hint": self.hint}


class MalformedStructure(AttestationError):
    """A TPM structure or event log could not be parsed (truncated, oversized, wrong tag)."""

    check = "structure.parse"
    hint = "The agent sent bytes that are not a valid TPM structure; check agent and TPM versions."
