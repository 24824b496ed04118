"""Attestation requirements of an ImagePolicy, and the facts Rego decides them on (pure).

An ImagePolicy/ClusterImagePolicy may require attestations (``spec.attestations``)::

    attestations:
      - name: provenance
        predicateType: slsaprovenance1     # cosign's --type names or a URI; "sbom": SPDX or
                                           # CycloneDX
        keys:                              # who must have signed it (same form as authorities)
          - {name: ci, pem: "-----BEGIN PUBLIC KEY-----…"}
        conditions:                        # provenance only; each must equal the predicate's
          builderId: https://github.com/acme/umec/.github/workflows/build.yml@refs/heads/main
          sourceRepository: https://github.com/acme/umec
          buildType: https://umec.io/build/v1
      - name: sbom
        predicateType: sbom                # present, signed by a key below, about this digest
        keys: [{name: ci, file: /etc/umec/keys/ci.pub}]

Python verifies (:func:`admission.core.attestations.verify_envelope`: DSSE signature, payload,
subject digest) against every key any requirement trusts; :func:`requirement_facts` then says,
per requirement, which verified attestations its own keys signed (with their predicate type and
:func:`admission.core.attestations.statement_facts`) and why the other envelopes do not count
for it, most telling first (subject, malformed, signature), each with the predicate type its
payload claims. ``policies/admission.rego`` decides: a requirement is met by one attestation of
an accepted type whose facts meet every condition; else the denial names, in this order, the
first of: ``attestation.predicate`` (an accepted type failing a condition), the first failure
*claiming* an accepted type (``attestation.subject`` / ``.malformed`` / ``.signature``: e.g. the
provenance signed by another key), ``attestation.predicate`` (only other types verified), the
first failure, ``attestation.missing``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from admission.core.attestations import (
    PROVENANCE_TYPES,
    SBOM_TYPES,
    EnvelopeVerdict,
    ImageAttestationError,
    predicate_type_uri,
    statement_facts,
)
from keys import PublicKey, key_thumbprint, public_key_pem

SBOM_ALIAS = "sbom"
CONDITIONS: Mapping[str, str] = {"builderId": "builder_id",
                                 "sourceRepository": "source_repository",
                                 "buildType": "build_type"}
_REQUIREMENT_KEYS = {"name", "predicateType", "keys", "conditions"}
# Most telling first: a signed envelope about another digest says more than an unsigned one.
_FAILURE_ORDER = ("attestation.subject", "attestation.malformed", "attestation.signature")
MAX_FAILURES = 4
MAX_LISTED = 20

Need = Callable[[bool, str, str], None]
KeyParser = Callable[[str, Any], tuple[str, PublicKey]]


@dataclass(frozen=True)
class AttestationRequirement:
    """One required attestation: accepted predicate types, its signers, its conditions."""

    name: str
    predicate_type: str                 # as the policy wrote it (named in messages)
    predicate_types: tuple[str, ...]    # the URIs it accepts
    keys: Mapping[str, PublicKey]       # key name → key
    key_ids: Mapping[str, str]          # key name → RFC 7638 thumbprint
    conditions: Mapping[str, str]       # builder_id / source_repository / build_type → value

    def trusted(self) -> dict[str, PublicKey]:
        return {self.key_ids[n]: k for n, k in self.keys.items()}

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, "predicateTypes": list(self.predicate_types),
                "conditions": dict(self.conditions),
                "keys": {n: public_key_pem(k).decode() for n, k in self.keys.items()}}


def _predicate_types(where: str, value: Any, need: Need) -> tuple[str, ...]:
    need(isinstance(value, str) and bool(value), where, "predicateType must be a non-empty "
         "string (cosign's --type name or a URI)")
    if value == SBOM_ALIAS:
        return tuple(sorted(SBOM_TYPES))
    try:
        return (predicate_type_uri(str(value)),)
    except ImageAttestationError as exc:
        need(False, where, exc.detail)
        raise AssertionError from exc   # need() raised


def _conditions(where: str, value: Any, types: tuple[str, ...], need: Need) -> dict[str, str]:
    if value is None:
        return {}
    need(isinstance(value, dict), where, "conditions must be a mapping")
    unknown = sorted(str(k) for k in value if k not in CONDITIONS)
    need(not unknown, where, f"unknown condition(s) {unknown}; known: {sorted(CONDITIONS)}")
    need(all(isinstance(v, str) and v for v in value.values()), where,
         "every condition must be a non-empty string")
    need(not value or set(types) <= PROVENANCE_TYPES, where,
         "conditions apply to SLSA provenance only (predicateType slsaprovenance1, "
         "slsaprovenance02 or their URIs)")
    return {CONDITIONS[k]: str(v) for k, v in value.items()}


def parse_requirement(where: str, doc: Any, *, need: Need,
                      parse_key: KeyParser) -> AttestationRequirement:
    """One ``spec.attestations[]`` entry; ``need``/``parse_key`` are the policy parser's own
    (so every mistake is the same PolicyInvalid, naming the document and the field)."""
    need(isinstance(doc, dict), where, "an attestation requirement must be a mapping")
    extra = sorted(str(k) for k in doc if k not in _REQUIREMENT_KEYS)
    need(not extra, where, f"unknown key(s) {extra}")
    name = doc.get("name")
    need(isinstance(name, str) and bool(name), f"{where}.name", "expected a non-empty string")
    types = _predicate_types(f"{where}.predicateType", doc.get("predicateType"), need)
    key_docs = doc.get("keys")
    need(isinstance(key_docs, list) and bool(key_docs), f"{where}.keys",
         "expected a non-empty list of keys (who must have signed the attestation)")
    keys: dict[str, PublicKey] = {}
    for i, k in enumerate(key_docs):
        key_name, key = parse_key(f"{where}.keys[{i}]", k)
        need(key_name not in keys, f"{where}.keys[{i}]", f"duplicate key name {key_name!r}")
        keys[key_name] = key
    conditions = _conditions(f"{where}.conditions", doc.get("conditions"), types, need)
    return AttestationRequirement(str(name), str(doc["predicateType"]), types, keys,
                                  {n: key_thumbprint(k) for n, k in keys.items()}, conditions)


def parse_requirements(where: str, value: Any, *, need: Need,
                       parse_key: KeyParser) -> tuple[AttestationRequirement, ...]:
    if value is None:
        return ()
    need(isinstance(value, list), where, "expected a list of attestation requirements")
    reqs = tuple(parse_requirement(f"{where}[{i}]", d, need=need, parse_key=parse_key)
                 for i, d in enumerate(value))
    need(len({r.name for r in reqs}) == len(reqs), where, "duplicate attestation names")
    return reqs


# --- facts for Rego ---------------------------------------------------------------------

def _failure(verdict: EnvelopeVerdict, mine: Sequence[str],
             req: AttestationRequirement) -> dict[str, str] | None:
    """Why ``verdict`` does not count for ``req`` (None: it counts), with the predicate type
    its payload claims (unverified: it only tells Rego which failure is relevant)."""
    claimed = {"predicate_type": verdict.claimed_type or ""}
    if verdict.error is not None and (mine or not verdict.signers):
        return {"check": verdict.error.check, "detail": verdict.error.detail[:300]} | claimed
    if not mine:
        return {"check": "attestation.signature",
                "detail": f"attestation {verdict.layer} is signed by none of the keys of "
                          f"{req.name!r} ({', '.join(sorted(req.keys))})"} | claimed
    return None


def _ordered(failures: list[dict[str, str]]) -> list[dict[str, str]]:
    unique = list({tuple(f.values()): f for f in failures}.values())
    unique.sort(key=lambda f: _FAILURE_ORDER.index(f["check"])
                if f["check"] in _FAILURE_ORDER else len(_FAILURE_ORDER))
    return unique[:MAX_FAILURES]


def requirement_facts(req: AttestationRequirement,
                      verdicts: Sequence[EnvelopeVerdict]) -> dict[str, Any]:
    """What Rego needs to decide ``req`` for one image (see the module doc)."""
    names = {kid: name for name, kid in req.key_ids.items()}
    attestations: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for verdict in verdicts:
        mine = sorted(names[s] for s in verdict.signers if s in names)
        failure = _failure(verdict, mine, req)
        if failure is not None:
            failures.append(failure)
        elif verdict.statement is not None:
            facts = statement_facts(verdict.statement)
            facts["source_repositories"] = facts["source_repositories"][:MAX_LISTED]
            facts["commits"] = facts["commits"][:MAX_LISTED]
            attestations.append({"signers": mine, **facts})
    return {"name": req.name, "predicate_type": req.predicate_type,
            "predicate_types": list(req.predicate_types), "conditions": dict(req.conditions),
            "keys": sorted(req.keys), "attestations": attestations[:MAX_LISTED],
            "failures": _ordered(failures)}
