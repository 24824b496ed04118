"""The facts Python hands Rego: the input of ``policies/admission.rego``.

Python computes facts (which digest, which step failed, which policies matched and whether each
is satisfied, what ``noMatch`` says, per required attestation what was verified and why the rest
does not count: :mod:`admission.core.attestation_policy`); Rego decides
(``data.umec.admission.decision``), and owns the check ids of its denials (``digest.required``,
``policy.no_match``, ``policy.unsatisfied``,
``attestation.missing`` / ``.predicate`` / ``.subject`` / ``.signature`` / ``.malformed``).
The shape is documented at the top of ``policies/admission.rego``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from admission.core.errors import AdmissionError
from admission.core.policy import ImageDecision


def container_facts(path: str, image: str, digest: str | None, *,
                    error: AdmissionError | None = None,
                    decision: ImageDecision | None = None) -> dict[str, Any]:
    """One container: its image, the digest it runs (None: unknown), the step that failed (if
    any), else the policies' verdicts on that digest (``decision``)."""
    entry: dict[str, Any] = {"path": path, "image": image, "digest": digest, "error": None,
                             "policies": [], "no_match": None}
    if error is not None:
        entry["error"] = {"check": error.check, "detail": error.detail}
    elif digest is not None and decision is not None:
        entry["policies"] = [{"policy": o.policy, "mode": o.mode, "satisfied": o.satisfied,
                              "reason": "; ".join(o.reasons), "signers": list(o.signers),
                              "attestations": list(o.attestations), "identity": o.identity}
                             for o in decision.matched]
        entry["no_match"] = decision.no_match
    return entry


def review_facts(namespace: str, kind: str, operation: str,
                 containers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The whole input: the review's namespace, kind and operation, and its containers."""
    return {"namespace": namespace, "kind": kind, "operation": operation,
            "containers": list(containers)}
