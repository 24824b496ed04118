"""IMA runtime integrity (issue 13): parse the measurement list, replay it into PCR 10, and
appraise each entry against a runtime policy in Keylime's JSON format. Pure: bytes in,
verdicts out.

* :mod:`.parse`: binary and ASCII lists, templates ``ima``, ``ima-ng``, ``ima-sig``,
  ``ima-buf``; every entry's template hash checked; typed :class:`ImaMalformed` errors only.
* :mod:`.replay`: replay into PCR 10 (sha1 and/or sha256 bank), incrementally from a running
  value, accepting the shortest prefix that matches the quote.
* :mod:`.policy`: Keylime runtime policy (``keylime-policy create runtime``) and appraisal.
"""

from __future__ import annotations

from attest.core.ima.errors import (
    ImaBufNotAllowed,
    ImaDigestNotAllowed,
    ImaEntryRejected,
    ImaKeyNotAllowed,
    ImaLogRequired,
    ImaMalformed,
    ImaOffsetMismatch,
    ImaPathNotAllowed,
    ImaPcrInvalid,
    ImaReplayMismatch,
    ImaTemplateHashMismatch,
    ImaTemplateUnknown,
    ImaTooLarge,
    ImaTruncated,
    ImaViolation,
    RuntimePolicyInvalid,
)
from attest.core.ima.parse import ImaEntry, parse_ascii, parse_binary, parse_list
from attest.core.ima.replay import ReplayResult, initial_pcr, replay_to_quote, template_digest

__all__ = [
    "ImaBufNotAllowed", "ImaDigestNotAllowed", "ImaEntry", "ImaEntryRejected",
    "ImaKeyNotAllowed", "ImaLogRequired", "ImaMalformed", "ImaOffsetMismatch",
    "ImaPathNotAllowed", "ImaPcrInvalid", "ImaReplayMismatch", "ImaTemplateHashMismatch",
    "ImaTemplateUnknown", "ImaTooLarge", "ImaTruncated", "ImaViolation", "ReplayResult",
    "RuntimePolicyInvalid", "initial_pcr", "parse_ascii", "parse_binary", "parse_list",
    "replay_to_quote", "template_digest",
]
