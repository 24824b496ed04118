"""Typed failures of image admission: signing, verification, policy and registry steps.

Same shape as ``attest.core.errors`` (the packages never import each other): ``check`` is a
stable dotted id used in admission messages, metrics and logs, ``detail`` names the image, key or
container path, ``hint`` tells the user what to do next.
"""

from __future__ import annotations

from typing import ClassVar


class AdmissionError(Exception):
    """A named admission check failed."""

    check: ClassVar[str] = "admission"
    hint: ClassVar[str] = "Inspect the image and its signatures; see `umec verify IMAGE`."

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.check}: {detail}")
        self.detail = detail

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "error": type(self).__name__, "detail": self.detail,
                "hint": self.hint}


class MalformedInput(AdmissionError):
    """Bytes from a registry, a signature or a request could not be parsed."""

    check = "input.malformed"
    hint = "The input is not in the expected format; check the producing tool and its version."
