"""Admission policies: which keys must have signed an image before it may run, and where.

Policies are Kubernetes-style YAML resources (served in a cluster by the CRDs in
``deploy/crd-imagepolicy.yaml``, group ``umec.io``)::

    apiVersion: umec.io/v1alpha1
    kind: ImagePolicy              # namespaced; ClusterImagePolicy applies to every namespace
    metadata: {name: tenant-a, namespace: tenant-a}
    spec:
      images: ["registry.example/tenant-a/**"]   # globs over the normalised image name
      mode: enforce                              # enforce | warn
      match: all                                 # all | any: how authorities combine
      authorities:
        - name: ci
          threshold: 2                           # N of the M keys below must have signed
          required: [release]                    # these key names must be among the signers
          keys:
            - {name: release, pem: "-----BEGIN PUBLIC KEY-----…"}
            - {name: ci-2024, file: /etc/umec/keys/ci-2024.pub}
      attestations:                              # optional: in-toto attestations required
        - name: provenance                       # (admission/core/attestation_policy.py)
          predicateType: slsaprovenance1
          keys: [{name: ci, pem: "-----BEGIN PUBLIC KEY-----…"}]
          conditions: {builderId: "https://…", sourceRepository: "https://…"}
    # ClusterImagePolicy only: noMatch: deny | allow | warn (images no policy matches)

Facts for one image in one namespace (:meth:`PolicySet.evaluate`); ``policies/admission.rego``
turns them into the decision (Python computes facts, Rego decides):

1. Applicable policies are every ClusterImagePolicy plus the ImagePolicies *of the pod's
   namespace only*, so a tenant's keys can never admit an image into another tenant's namespace
   (the neutral-host case); of those, the ones whose ``images`` globs match the image name.
2. No policy matches: the ``noMatch`` rule applies (the strictest one configured wins; the
   default is ``deny``: unknown images fail closed).
3. Every matching policy must be satisfied (``AllOf``): a cluster-wide baseline cannot be
   bypassed by a namespace policy, and vice versa. A policy is the ``AllOf``/``AnyOf`` of its
   authorities; an authority is ``AllOf(KeyThreshold, RequiredSigners)``.
4. Rego: a failing policy in ``warn`` mode yields a warning; in ``enforce`` mode a denial.

Signers are identified by the RFC 7638 thumbprint of their public key (``key_id``), so two
documents naming the same key differently still agree, and names never collide across tenants.
A keyless signer's id is its issuer and subject *under the digest of the trust root* that
verified its certificate (:meth:`KeylessIdentity.signer_id`): a tenant's policy with its own
root cannot mint the id another policy's authority counts.

What to verify an image with is the applicable policies' keys, keyless authorities and
attestation keys only (:meth:`PolicySet.scope`), never another namespace's: a tenant's glob
cannot add its keys or roots to the verification of other tenants' pods; the scope's digest
(a hash of exactly those policies) keys the verification cache, so editing one tenant's policy
does not flush another's cached verdicts.
Modelled on sigstore-python's ``verify/policy.py``: small objects, one ``verify()`` each,
composed. Pure: file references are read through a callable the adapter passes in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Literal, Protocol

import yaml

from admission.core.attestation_policy import (
    AttestationRequirement,
    parse_requirements,
    requirement_facts,
)
from admission.core.attestations import EnvelopeVerdict
from admission.core.errors import AdmissionError
from admission.core.identity import SignedIdentity, parse_signed_identity
from admission.core.keyless import KeylessAuthority, TrustRootInvalid, parse_trusted_root
from admission.core.verify import KeylessIdentity
from keys import KeysError, PublicKey, key_thumbprint, load_public_key, public_key_pem

API_VERSION = "umec.io/v1alpha1"
KINDS = ("ImagePolicy", "ClusterImagePolicy")
Mode = Literal["enforce", "warn"]
NoMatch = Literal["deny", "allow", "warn"]
_NO_MATCH_STRICTNESS: dict[str, int] = {"allow": 0, "warn": 1, "deny": 2}


class PolicyInvalid(AdmissionError):
    check = "policy.invalid"
    hint = ("Fix the ImagePolicy/ClusterImagePolicy document named in the message; unknown "
            "keys are rejected so that a typo can never widen what is admitted.")


class Signer(Protocol):
    """What the policy needs from a verified signature (``admission.core.verify``)."""

    @property
    def digest(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    @property
    def reference(self) -> str | None:
        """The docker-reference a legacy signature names (None: a bundle names none)."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reasons: tuple[str, ...] = ()


class Check(Protocol):
    def verify(self, signers: frozenset[str]) -> CheckResult: ...


@dataclass(frozen=True)
class KeyThreshold:
    """At least ``threshold`` distinct keys of ``keys`` (name → key id) signed."""

    authority: str
    keys: Mapping[str, str]
    threshold: int

    def verify(self, signers: frozenset[str]) -> CheckResult:
        signed = sorted(name for name, kid in self.keys.items() if kid in signers)
        if len(signed) >= self.threshold:
            return CheckResult(True)
        return CheckResult(False, (
            f"authority {self.authority!r}: {len(signed)} of the required {self.threshold} "
            f"keys signed (signed: {', '.join(signed) or 'none'}; "
            f"trusted: {', '.join(sorted(self.keys))})",))


@dataclass(frozen=True)
class RequiredSigners:
    """Every named key must be among the signers."""

    authority: str
    required: Mapping[str, str]

    def verify(self, signers: frozenset[str]) -> CheckResult:
        missing = sorted(name for name, kid in self.required.items() if kid not in signers)
        if not missing:
            return CheckResult(True)
        return CheckResult(False, (f"authority {self.authority!r}: required signer(s) "
                                   f"{', '.join(missing)} did not sign",))


@dataclass(frozen=True)
class AllOf:
    checks: tuple[Check, ...]

    def verify(self, signers: frozenset[str]) -> CheckResult:
        # Evaluate everything (no short-circuit) so the message lists every unmet condition.
        results = [c.verify(signers) for c in self.checks]
        failed = tuple(r for res in results if not res.ok for r in res.reasons)
        return CheckResult(not failed, failed)


@dataclass(frozen=True)
class AnyOf:
    checks: tuple[Check, ...]

    def verify(self, signers: frozenset[str]) -> CheckResult:
        results = [c.verify(signers) for c in self.checks]
        if any(r.ok for r in results):
            return CheckResult(True)
        return CheckResult(False, ("none of the authorities is satisfied: "
                                   + "; ".join(r for res in results for r in res.reasons),))


@dataclass(frozen=True)
class Authority:
    name: str
    keys: Mapping[str, PublicKey]       # key name → key
    key_ids: Mapping[str, str]          # key name → RFC 7638 thumbprint
    threshold: int
    required: tuple[str, ...]
    # A keyless authority: its key_ids are its identities' signer ids, ``keys`` is empty.
    keyless: KeylessAuthority | None = None

    def check(self) -> Check:
        return AllOf((KeyThreshold(self.name, self.key_ids, self.threshold),
                      RequiredSigners(self.name, {n: self.key_ids[n] for n in self.required})))


@dataclass(frozen=True)
class ImagePolicy:
    kind: str
    name: str
    namespace: str | None               # None for a ClusterImagePolicy
    images: tuple[str, ...]
    authorities: tuple[Authority, ...]
    mode: Mode = "enforce"
    match: Literal["all", "any"] = "all"
    no_match: NoMatch | None = None
    attestations: tuple[AttestationRequirement, ...] = ()   # spec.attestations
    signed_identity: SignedIdentity = field(default_factory=SignedIdentity)  # signedIdentity
    _check: Check = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = tuple(a.check() for a in self.authorities)
        object.__setattr__(self, "_check", AllOf(checks) if self.match == "all" else AnyOf(checks))

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else \
            f"{self.kind}/{self.name}"

    def matches(self, image_name: str) -> bool:
        return any(_glob(g).fullmatch(image_name) for g in self.images)

    def verify(self, signers: frozenset[str]) -> CheckResult:
        return self._check.verify(signers)

    def keys(self) -> dict[str, PublicKey]:
        return {a.key_ids[n]: k for a in self.authorities for n, k in a.keys.items()}

    def key_names(self) -> dict[str, str]:
        return {kid: n for a in self.authorities for n, kid in a.key_ids.items()}

    def keyless(self) -> tuple[KeylessAuthority, ...]:
        return tuple(a.keyless for a in self.authorities if a.keyless is not None)

    def accepted(self, signers: Sequence[Signer], image: str) -> tuple[frozenset[str], str]:
        """The signer ids whose signature names an image ``signedIdentity`` accepts for
        ``image``, and a reason naming the ones it refused (empty if none)."""
        ok = frozenset(s.key_id for s in signers
                       if self.signed_identity.accepts(image, s.reference))
        names = self.key_names()
        refused = sorted({f"{names[s.key_id]} signed {s.reference or 'no reference'}"
                          for s in signers if s.key_id not in ok and s.key_id in names})
        why = (f"signedIdentity {self.signed_identity.describe()} refuses the signature(s) "
               f"for {image}: {'; '.join(refused)}") if refused else ""
        return ok, why

    def attestation_keys(self) -> dict[str, PublicKey]:
        return {kid: k for r in self.attestations for kid, k in r.trusted().items()}

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the policy's canonical form (keys, roots and identities included)."""
        return hashlib.sha256(json.dumps(_canonical(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class VerificationScope:
    """What verifying one image for one namespace takes: the keys, keyless authorities and
    attestation keys of the policies that apply there (:meth:`PolicySet.scope`), and a digest
    of exactly those policies, which keys cached verdicts."""

    policies: tuple[ImagePolicy, ...]
    keys: Mapping[str, PublicKey]
    keyless: tuple[KeylessAuthority, ...]
    attestation_keys: Mapping[str, PublicKey]

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(" ".join(sorted(p.digest for p in self.policies)).encode()
                              ).hexdigest()


@dataclass(frozen=True)
class PolicyOutcome:
    """One policy's verdict on one image (the Rego input's ``policies`` entries)."""

    policy: str
    mode: Mode
    satisfied: bool
    reasons: tuple[str, ...]
    signers: tuple[str, ...]            # names of this policy's keys that signed
    # Per attestation requirement, the facts Rego decides it on (attestation_policy.py).
    attestations: tuple[dict[str, Any], ...] = ()
    identity: str = "matchRepository"   # the policy's signedIdentity type (Rego warns: ignore)


@dataclass(frozen=True)
class ImageDecision:
    """The policies' verdicts on one image: facts for Rego, which decides admission
    (:mod:`admission.core.rego_input`)."""

    image: str
    matched: tuple[PolicyOutcome, ...]
    no_match: NoMatch | None            # set when no policy matched

    @property
    def verified(self) -> bool:
        """Every matching policy is satisfied (what the admission record says): a fact, not
        the admission decision (a warn-mode policy may be unsatisfied and the pod admitted)."""
        return bool(self.matched) and all(o.satisfied for o in self.matched)


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[ImagePolicy, ...]
    default_no_match: NoMatch = "deny"
    generation: str = ""

    @property
    def no_match(self) -> NoMatch:
        rules = [self.default_no_match, *(p.no_match for p in self.policies if p.no_match)]
        return max(rules, key=lambda r: _NO_MATCH_STRICTNESS[r])

    def applicable(self, namespace: str, image_name: str) -> list[ImagePolicy]:
        return [p for p in self.policies
                if (p.namespace is None or p.namespace == namespace) and p.matches(image_name)]

    def scope(self, namespace: str, image_name: str) -> VerificationScope:
        """The keys, keyless authorities and attestation keys of the policies that apply to
        ``image_name`` in ``namespace`` (:meth:`applicable`), and nothing of any other
        namespace's policies."""
        applicable = tuple(self.applicable(namespace, image_name))
        keys: dict[str, PublicKey] = {}
        attestation_keys: dict[str, PublicKey] = {}
        for p in applicable:
            keys.update(p.keys())
            attestation_keys.update(p.attestation_keys())
        keyless = tuple(dict.fromkeys(a for p in applicable for a in p.keyless()))
        return VerificationScope(applicable, keys, keyless, attestation_keys)

    def keys_for(self, namespace: str, image_name: str) -> dict[str, PublicKey]:
        """Every key a policy applicable in ``namespace`` trusts for this image."""
        return dict(self.scope(namespace, image_name).keys)

    def attestation_keys_for(self, namespace: str, image_name: str) -> dict[str, PublicKey]:
        """Every key an applicable policy's attestation requirement trusts for this image."""
        return dict(self.scope(namespace, image_name).attestation_keys)

    def keyless_for(self, namespace: str, image_name: str) -> tuple[KeylessAuthority, ...]:
        """Every keyless authority a policy applicable in ``namespace`` has for this image."""
        return self.scope(namespace, image_name).keyless

    def evaluate(self, namespace: str, image_name: str,
                 signers: Iterable[Signer], digest: str,
                 attestations: Sequence[EnvelopeVerdict] = (), *,
                 image: str | None = None) -> ImageDecision:
        """``attestations``: the image's envelopes verified for exactly ``digest`` against
        :meth:`attestation_keys_for` (the subject check is part of that verification).
        ``image``: the reference as the pod names it (tag kept), which each policy's
        ``signedIdentity`` holds the signatures' docker-reference to (default name@digest)."""
        # Only signatures over exactly this digest count (a signature copied from another image
        # names another digest and must not be counted even if the verifier returned it).
        valid = [s for s in signers if s.digest == digest]
        outcomes = []
        for p in self.applicable(namespace, image_name):
            kids, why = p.accepted(valid, image or f"{image_name}@{digest}")
            res = p.verify(kids)
            names = p.key_names()
            reasons = res.reasons + ((why,) if why and not res.ok else ())
            outcomes.append(PolicyOutcome(p.ref, p.mode, res.ok, reasons,
                                          tuple(sorted({names[k] for k in kids if k in names})),
                                          tuple(requirement_facts(r, attestations)
                                                for r in p.attestations),
                                          p.signed_identity.type))
        return ImageDecision(image_name, tuple(outcomes), None if outcomes else self.no_match)


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one path component, ``**`` across components, ``?`` one char."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


# --- parsing ---------------------------------------------------------------------------------

FileLoader = Callable[[str], bytes]
_DOC_KEYS = {"apiVersion", "kind", "metadata", "spec", "status"}
_SPEC_KEYS = {"images", "authorities", "mode", "match", "noMatch", "attestations",
              "signedIdentity"}
_AUTH_KEYS = {"name", "keys", "threshold", "required", "keyless"}
_KEYLESS_KEYS = {"trustedRoot", "identities"}
_KEY_KEYS = {"name", "pem", "file"}


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise PolicyInvalid(f"{where}: {msg}")


def _unknown(where: str, doc: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(str(k) for k in doc if k not in allowed)
    _need(not extra, where, f"unknown key(s) {extra}")


def _str(where: str, value: Any) -> str:
    _need(isinstance(value, str) and bool(value), where, f"expected a non-empty string, "
          f"got {value!r}")
    return str(value)


def _list(where: str, value: Any) -> list[Any]:
    _need(isinstance(value, list) and bool(value), where, "expected a non-empty list")
    return list(value)


def _key(where: str, doc: Any, load_file: FileLoader | None) -> tuple[str, PublicKey]:
    _need(isinstance(doc, dict), where, "a key must be a mapping")
    _unknown(where, doc, _KEY_KEYS)
    name = _str(f"{where}.name", doc.get("name"))
    _need(("pem" in doc) != ("file" in doc), where, "give exactly one of pem, file")
    try:
        if "pem" in doc:
            data = _str(f"{where}.pem", doc["pem"]).encode()
        else:
            _need(load_file is not None, where, "file references are not allowed here")
            assert load_file is not None
            data = load_file(_str(f"{where}.file", doc["file"]))
        return name, load_public_key(data, f"{where} ({name})")
    except (KeysError, OSError) as e:
        raise PolicyInvalid(f"{where}: {e}") from None


def _threshold(where: str, doc: Mapping[str, Any], signers: int) -> int:
    threshold = doc.get("threshold", 1)
    _need(type(threshold) is int and 1 <= threshold <= signers, f"{where}.threshold",
          f"must be an integer in 1..{signers}, got {threshold!r}")
    return int(threshold)


def _trusted_root(where: str, doc: Any, load_file: FileLoader | None) -> bytes:
    _need(isinstance(doc, dict) and len(doc) == 1 and ("json" in doc or "file" in doc), where,
          "give exactly one of json (the trusted_root.json text), file")
    if "json" in doc:
        return _str(f"{where}.json", doc["json"]).encode()
    _need(load_file is not None, where, "file references are not allowed here")
    assert load_file is not None
    try:
        return load_file(_str(f"{where}.file", doc["file"]))
    except OSError as e:
        raise PolicyInvalid(f"{where}: {e}") from None


def _keyless_identity(where: str, doc: Any) -> KeylessIdentity:
    _need(isinstance(doc, dict), where, "an identity is a mapping {issuer, subject}")
    _unknown(where, doc, {"issuer", "subject"})
    try:
        return KeylessIdentity(_str(f"{where}.subject", doc.get("subject")),
                               _str(f"{where}.issuer", doc.get("issuer")))
    except ValueError as e:
        raise PolicyInvalid(f"{where}: {e}") from None


def _keyless_authority(where: str, name: str, doc: Mapping[str, Any],
                       load_file: FileLoader | None) -> Authority:
    """``keyless: {trustedRoot: {json|file}, identities: [{issuer, subject}]}`` (the field
    names of policy-controller's ClusterImagePolicy, with a root instead of a TrustRoot CR)."""
    _need("keys" not in doc and "required" not in doc, where,
          "a keyless authority names identities, not keys or required signers")
    spec = doc["keyless"]
    _need(isinstance(spec, dict), f"{where}.keyless", "must be a mapping")
    _unknown(f"{where}.keyless", spec, _KEYLESS_KEYS)
    raw = _trusted_root(f"{where}.keyless.trustedRoot", spec.get("trustedRoot"), load_file)
    try:
        root = parse_trusted_root(raw)
    except TrustRootInvalid as e:
        raise PolicyInvalid(f"{where}.keyless.trustedRoot: {e.detail}") from None
    identities = tuple(_keyless_identity(f"{where}.keyless.identities[{i}]", d) for i, d in
                       enumerate(_list(f"{where}.keyless.identities", spec.get("identities"))))
    ids = {f"{i.identity} ({i.issuer})": i.signer_id(root.digest) for i in identities}
    _need(len(ids) == len(identities), f"{where}.keyless.identities", "an identity is listed "
          "twice (a threshold would count it once)")
    return Authority(name, {}, ids, _threshold(where, doc, len(ids)), (),
                     KeylessAuthority(root, identities))


def _authority(where: str, doc: Any, load_file: FileLoader | None) -> Authority:
    _need(isinstance(doc, dict), where, "an authority must be a mapping")
    _unknown(where, doc, _AUTH_KEYS)
    name = _str(f"{where}.name", doc.get("name"))
    if "keyless" in doc:
        return _keyless_authority(where, name, doc, load_file)
    keys: dict[str, PublicKey] = {}
    for i, k in enumerate(_list(f"{where}.keys", doc.get("keys"))):
        kname, key = _key(f"{where}.keys[{i}]", k, load_file)
        _need(kname not in keys, f"{where}.keys[{i}]", f"duplicate key name {kname!r}")
        keys[kname] = key
    kids = {n: key_thumbprint(k) for n, k in keys.items()}
    _need(len(set(kids.values())) == len(kids), f"{where}.keys",
          "the same key is listed twice (a threshold would count it once)")
    threshold = _threshold(where, doc, len(keys))
    required = doc.get("required", [])
    _need(isinstance(required, list) and all(r in keys for r in required),
          f"{where}.required", f"must list key names of this authority, got {required!r}")
    return Authority(name, keys, kids, threshold, tuple(required))


def parse_policy(doc: Any, load_file: FileLoader | None = None) -> ImagePolicy:
    """Parse one ImagePolicy / ClusterImagePolicy resource (a decoded YAML mapping)."""
    _need(isinstance(doc, dict), "document", "a policy must be a mapping")
    _unknown("document", doc, _DOC_KEYS)
    _need(doc.get("apiVersion") == API_VERSION, "apiVersion", f"must be {API_VERSION}")
    kind = doc.get("kind")
    _need(kind in KINDS, "kind", f"must be one of {list(KINDS)}, got {kind!r}")
    meta = doc.get("metadata")
    _need(isinstance(meta, dict), "metadata", "missing")
    name = _str("metadata.name", meta.get("name"))
    where = f"{kind}/{name}"
    namespace = meta.get("namespace")
    if kind == "ImagePolicy":
        namespace = _str(f"{where}: metadata.namespace", namespace)
    else:
        _need(namespace is None, where, "a ClusterImagePolicy has no namespace")
    spec = doc.get("spec")
    _need(isinstance(spec, dict), f"{where}.spec", "missing")
    _unknown(f"{where}.spec", spec, _SPEC_KEYS)
    images = tuple(_str(f"{where}.spec.images[{i}]", g)
                   for i, g in enumerate(_list(f"{where}.spec.images", spec.get("images"))))
    auths = [_authority(f"{where}.spec.authorities[{i}]", a, load_file)
             for i, a in enumerate(_list(f"{where}.spec.authorities", spec.get("authorities")))]
    _need(len({a.name for a in auths}) == len(auths), f"{where}.spec.authorities",
          "duplicate authority names")
    mode = spec.get("mode", "enforce")
    _need(mode in ("enforce", "warn"), f"{where}.spec.mode", f"enforce or warn, got {mode!r}")
    match = spec.get("match", "all")
    _need(match in ("all", "any"), f"{where}.spec.match", f"all or any, got {match!r}")
    no_match = spec.get("noMatch")
    _need(no_match is None or kind == "ClusterImagePolicy", f"{where}.spec.noMatch",
          "only a ClusterImagePolicy may say what happens to images no policy matches")
    _need(no_match in (None, "deny", "allow", "warn"), f"{where}.spec.noMatch",
          f"deny, allow or warn, got {no_match!r}")
    attestations = parse_requirements(
        f"{where}.spec.attestations", spec.get("attestations"), need=_need,
        parse_key=lambda at, k: _key(at, k, load_file))
    try:
        identity = parse_signed_identity(spec.get("signedIdentity"),
                                         f"{where}.spec.signedIdentity")
    except ValueError as e:
        raise PolicyInvalid(str(e)) from None
    return ImagePolicy(str(kind), name, namespace, images, tuple(auths), mode, match, no_match,
                       attestations, signed_identity=identity)


def _canonical(p: ImagePolicy) -> dict[str, Any]:
    return {"kind": p.kind, "name": p.name, "namespace": p.namespace, "images": list(p.images),
            "mode": p.mode, "match": p.match, "noMatch": p.no_match,
            "authorities": [{"name": a.name, "threshold": a.threshold,
                             "required": list(a.required),
                             "keys": {n: public_key_pem(k).decode() for n, k in a.keys.items()},
                             "keyless": None if a.keyless is None else {
                                 "root": a.keyless.root.digest,
                                 "identities": sorted(a.key_ids.values())}}
                            for a in p.authorities],
            "signedIdentity": [p.signed_identity.type, p.signed_identity.docker_repository],
            "attestations": [r.canonical() for r in p.attestations]}


def load_policies(docs: Sequence[Any], *, default_no_match: NoMatch = "deny",
                  load_file: FileLoader | None = None) -> PolicySet:
    """Parse every document; ``generation`` hashes their canonical form (keys included), so any
    change of what is trusted invalidates cached verdicts."""
    policies = tuple(parse_policy(d, load_file) for d in docs if d is not None)
    refs = [p.ref for p in policies]
    _need(len(set(refs)) == len(refs), "documents", "the same policy is defined twice")
    canon = json.dumps({"default": default_no_match,
                        "policies": sorted((_canonical(p) for p in policies),
                                           key=lambda c: json.dumps(c, sort_keys=True))},
                       sort_keys=True).encode()
    return PolicySet(policies, default_no_match, hashlib.sha256(canon).hexdigest())


def load_policies_yaml(text: str | bytes, *, default_no_match: NoMatch = "deny",
                       load_file: FileLoader | None = None) -> PolicySet:
    """Parse a multi-document YAML stream (or a ``kind: List`` of items)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise PolicyInvalid(f"YAML: {e}") from None
    flat: list[Any] = []
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List":
            flat.extend(d.get("items") or [])
        elif d is not None:
            flat.append(d)
    return load_policies(flat, default_no_match=default_no_match, load_file=load_file)
