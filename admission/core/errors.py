"""Typed failures of image admission: signing, verification, policy and registry steps.

A :class:`kernel.errors.CheckedError` like every µMEC error: ``check`` is a stable dotted id
used in admission messages, metrics and logs, ``detail`` names the image, key or container path,
``hint`` tells the user what to do next. The webhook answers an admission error as a denial
(HTTP 200, ``allowed: false``); ``status`` matters only for a review it cannot answer at all
(400, 413 for an oversized one), which it answers as problem+json titled by the class name.
"""

from __future__ import annotations

from kernel.errors import CheckedError


class AdmissionError(CheckedError):
    """A named admission check failed."""

    check = "admission"
    hint = "Inspect the image and its signatures; see `umec verify IMAGE`."
    status = 400
    class_named = True


class MalformedInput(AdmissionError):
    """Bytes from a registry, a signature or a request could not be parsed."""

    check = "input.malformed"
    hint = "The input is not in the expected format; check the producing tool and its version."
