"""Typed failures of IMA measurement-list parsing, replay and appraisal (issue 13).

* :class:`ImaMalformed` (a :class:`~attest.core.errors.MalformedStructure`, ``ima.parse``): the
  list the agent sent is not a well-formed IMA measurement list; one subclass per way of being
  wrong (truncated final entry, unknown template, template hash that is not the hash of the
  entry's data).
* :class:`ImaReplayMismatch` (``ima.replay``): no prefix of the list replays to the quoted PCR 10
  (the list was edited, belongs to another boot, or is longer than what the quote covers with no
  prefix matching).
* Appraisal failures (``ima.digest_not_allowed``, ``ima.path_not_allowed``, ``ima.violation``,
  ``ima.keyring``, ``ima.buf``): the list is authentic, but an entry breaks the runtime policy.
  Each names the entry's path, its digest and the check.

:class:`RuntimePolicyInvalid` is raised while *loading* a runtime policy; it is also a
``ValueError`` so the appraisal-policy loader wraps it into its own ``PolicyInvalid``.
"""

from __future__ import annotations

from typing import Any

from attest.core.errors import AttestationError, MalformedStructure

_FIX_AGENT = ("Have the agent send /sys/kernel/security/ima/binary_runtime_measurements (or the "
              "ASCII list) exactly as read; a list that does not parse is never trusted.")


class ImaMalformed(MalformedStructure):
    """Base class: the bytes are not a valid IMA measurement list."""

    check = "ima.parse"
    hint = _FIX_AGENT


class ImaTruncated(ImaMalformed):
    check = "ima.truncated"
    hint = "The list ends inside an entry. " + _FIX_AGENT


class ImaTooLarge(ImaMalformed):
    check = "ima.too_large"
    hint = ("The list (or one entry) exceeds the verifier's limit. Send only the entries after "
            "the offset the verifier accepted, or raise the limit if the node is genuine.")


class ImaTemplateUnknown(ImaMalformed):
    check = "ima.template"
    hint = ("The entry uses an IMA template the verifier does not read; configure the node's "
            "kernel with ima_template=ima-ng (or ima-sig), which the verifier supports.")


class ImaPcrInvalid(ImaMalformed):
    check = "ima.pcr"
    hint = ("An entry was measured into a PCR other than 10; only PCR 10 is quoted for IMA, so "
            "the entry cannot be authenticated. Remove pcr= rules from the node's IMA policy.")


class ImaTemplateHashMismatch(ImaMalformed):
    check = "ima.template_hash"
    hint = ("An entry's template hash is not the hash of its data: the list was edited. Treat "
            "the node as compromised unless the agent is known to be broken.")


class ImaReplayMismatch(AttestationError):
    check = "ima.replay"
    hint = ("No prefix of the IMA list replays to the quoted PCR 10: it was edited, truncated, "
            "or belongs to another boot. The agent re-sends the full list; if it still fails, "
            "treat the node as compromised.")


class ImaOffsetMismatch(AttestationError):
    """The agent sent entries from an offset the verifier did not accept (or a reboot)."""

    check = "ima.offset"
    status = 409
    hint = "Re-send the IMA list from the offset the verifier names (ima_offset)."

    def __init__(self, detail: str, *, expected: int) -> None:
        super().__init__(detail)
        self.expected = expected

    def problem_extra(self) -> dict[str, Any]:
        return {**super().problem_extra(), "ima_offset": self.expected}


class ImaLogRequired(AttestationError):
    check = "ima.required"
    hint = ("The node class has a runtime policy: make the agent send its IMA list "
            "(ima_log_path) with each quote, and quote PCR 10.")


class ImaEntryRejected(AttestationError):
    """An authentic entry breaks the runtime policy: names path, digest and check."""

    check = "ima.appraise"
    hint = "Investigate the node."

    def __init__(self, index: int, path: str, digest: str, why: str) -> None:
        super().__init__(f"entry #{index} {path!r} digest {digest}: {why}")
        self.index, self.path, self.digest = index, path, digest


class ImaDigestNotAllowed(ImaEntryRejected):
    check = "ima.digest_not_allowed"
    hint = ("A measured file's content is not one the runtime policy allows for its path. If "
            "it is an intended update, add the digest to the runtime policy; otherwise the file "
            "was changed: investigate the node.")


class ImaPathNotAllowed(ImaEntryRejected):
    check = "ima.path_not_allowed"
    hint = ("A file that is neither in the runtime policy's digests nor excluded was measured. "
            "Add it (keylime-policy create runtime) or an exclude pattern, or investigate.")


class ImaViolation(ImaEntryRejected):
    check = "ima.violation"
    hint = ("IMA recorded a violation (file opened for write while measured, or measured while "
            "open for write): its content is unknown. Exclude the path if that is expected.")


class ImaKeyNotAllowed(ImaEntryRejected):
    check = "ima.keyring"
    hint = ("A key was loaded onto a kernel keyring that the runtime policy does not allow. Add "
            "it to the policy's keyrings (or ignored_keyrings), or investigate the node.")


class ImaBufNotAllowed(ImaEntryRejected):
    check = "ima.buf"
    hint = ("A measured buffer (ima-buf) is not allowed by the runtime policy's ima-buf section, "
            "or its digest is not the hash of its data.")


class RuntimePolicyInvalid(AttestationError, ValueError):
    """A runtime policy (Keylime JSON) is invalid; ``detail`` starts with the offending key."""

    check = "policy.runtime"
    status = 422
    hint = ("Fix the runtime policy: Keylime's runtime-policy JSON as made by "
            "`keylime-policy create runtime` (meta.version 1, digests, excludes, keyrings, ima).")
