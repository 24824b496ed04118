"""In-toto attestations in cosign's format: DSSE envelopes under ``sha256-<hex>.att`` (pure).

What ``cosign attest --key K --type T --predicate FILE IMAGE`` writes (sigstore/cosign
``cmd/cosign/cli/attest``, ``pkg/cosign/attestation``, ``pkg/oci/static``; sigstore/sigstore
``pkg/signature/dsse``; go-securesystemslib ``dsse``), and what we write the same way:

1. An in-toto *Statement* (Go ``encoding/json``, struct order)::

       {"_type":"https://in-toto.io/Statement/v1","predicateType":URI,
        "subject":[{"name":REPO,"digest":{"sha256":HEX}}],"predicate":{...}}

   ``REPO`` is the image's repository (go-containerregistry ``Repository.String()``), ``HEX``
   the manifest digest without ``sha256:``. ``--type`` names (``slsaprovenance1``, ``spdxjson``,
   ``cyclonedx``, ``custom``, ...) map to URIs as cosign maps them (:data:`PREDICATE_TYPES`);
   anything else must be a URI. ``custom`` wraps the file as ``{"Data":TEXT,"Timestamp":RFC3339}``,
   ``spdx`` as a string; every other type must be JSON (SLSA and link predicates with the fields
   cosign requires). cosign still writes ``_type`` ``Statement/v0.1``; in-toto's current
   ``Statement/v1`` is written here, and both are read.
2. A DSSE envelope ``{"payloadType":"application/vnd.in-toto+json","payload":B64,
   "signatures":[{"keyid":"","sig":B64}]}``; the signature is over
   ``PAE = "DSSEv1" SP len(type) SP type SP len(body) SP body`` (ECDSA P-256 / RSA PKCS#1 v1.5
   with SHA-256, or Ed25519 over the PAE bytes).
3. The envelope as one layer of media type ``application/vnd.dsse.envelope.v1+json`` with the
   annotations ``dev.cosignproject.cosign/signature: ""`` and ``predicateType: URI``, in an image
   built exactly like the ``.sig`` image (:func:`admission.core.cosign.build_signature_image`),
   under the tag ``sha256-<hex>.att``; new attestations are appended.

Verification of one envelope against keys (:func:`verify_envelope`), in this order:

1. The envelope parses within bounds (:class:`AttestationMalformed`): at most
   :data:`MAX_ENVELOPE_BYTES`, at most :data:`MAX_ENVELOPE_SKELETON` bytes outside its JSON
   strings (checked before ``json.loads``: an envelope is a handful of keys around two or three
   long strings, so padding such as ``[],[],…`` is refused before it becomes millions of
   objects), the payload and signatures base64 of bounded length.
2. The signature over ``PAE(payloadType, payload bytes)`` under one of the keys
   (:class:`AttestationSignatureInvalid`). Until one verifies, nothing in the payload is
   evidence of anything, and the payload is not even parsed.
3. ``payloadType`` is in-toto and the payload is a Statement (:class:`AttestationMalformed`),
   parsed only after a pre-scan bounds its values (:data:`MAX_JSON_VALUES`) and nesting
   (:data:`MAX_JSON_DEPTH`): ``json.loads`` itself has no limits.
4. A subject's ``sha256`` digest is the image's (:class:`AttestationSubjectMismatch`): this is
   what stops an envelope copied from another image's ``.att`` (a replay) or made for another
   digest. The subject *name* is not compared, as cosign does not: the digest is the content.

The predicate type and the conditions on the predicate are the policy's (and Rego's) business:
:func:`statement_facts` extracts what a policy may ask about (SLSA builder id, build type,
source repositories, commits; SBOM format and package count).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from hmac import compare_digest
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from admission.core.cosign import (
    SIGNATURE_ANNOTATION,
    SignatureImage,
    SignatureLayer,
    build_signature_image,
    go_json_string,
)
from admission.core.errors import AdmissionError
from keys import PublicKey

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_ANNOTATION = "predicateType"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
STATEMENT_V01 = "https://in-toto.io/Statement/v0.1"
STATEMENT_TYPES = frozenset({STATEMENT_V1, STATEMENT_V01})

CUSTOM = "https://cosign.sigstore.dev/attestation/v1"
SLSA_V02 = "https://slsa.dev/provenance/v0.2"
SLSA_V1 = "https://slsa.dev/provenance/v1"
SPDX = "https://spdx.dev/Document"
CYCLONEDX = "https://cyclonedx.org/bom"
LINK = "https://in-toto.io/Link/v1"
# cosign's --type names (cmd/cosign/cli/options/predicate.go).
PREDICATE_TYPES: Mapping[str, str] = {
    "custom": CUSTOM, "slsaprovenance": SLSA_V02, "slsaprovenance02": SLSA_V02,
    "slsaprovenance1": SLSA_V1, "spdx": SPDX, "spdxjson": SPDX, "cyclonedx": CYCLONEDX,
    "link": LINK, "vuln": "https://cosign.sigstore.dev/attestation/vuln/v1",
    "openvex": "https://openvex.dev/ns"}
PROVENANCE_TYPES = frozenset({SLSA_V02, SLSA_V1})
SBOM_TYPES = frozenset({SPDX, CYCLONEDX})
# Fields cosign requires in the predicate file (in-toto-golang structs without omitempty).
_REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "slsaprovenance": ("builder", "buildType"), "slsaprovenance02": ("builder", "buildType"),
    "slsaprovenance1": ("buildDefinition", "runDetails"),
    "link": ("_type", "name", "materials", "products", "byproducts", "command", "environment")}

# An .att manifest holds one layer per attestation run. One envelope is fetched, verified and
# dropped at a time; its cost is a few times its size (raw, payload, PAE), its statement's
# parse bounded by value count. 1 MiB holds our SBOMs (packages, no file lists) many times.
MAX_ATTESTATION_LAYERS = 64
MAX_ENVELOPE_BYTES = 1 << 20
MAX_ENVELOPE_SKELETON = 4096        # envelope bytes outside its JSON strings
MAX_SIGNATURE_CHARS = 4096          # one base64 signature (RSA-4096: 684)
MAX_JSON_VALUES = 100_000           # a statement's arrays, objects and elements (pre-scan)
MAX_JSON_DEPTH = 64                 # a statement's nesting of arrays and objects
MAX_SIGNATURES = 16
MAX_SUBJECTS = 1024
_URL_TO_STD = str.maketrans("-_", "+/")


class ImageAttestationError(AdmissionError):
    check = "attestation"
    hint = "Inspect the image's attestations with `umec verify-attestation IMAGE --key KEY`."


class AttestationMalformed(ImageAttestationError):
    check = "attestation.malformed"
    hint = ("The attestation is not a DSSE envelope of an in-toto Statement; re-attest the "
            "image with `umec attest` or cosign.")


class AttestationMissing(ImageAttestationError):
    check = "attestation.missing"
    hint = ("The image has no attestation of the required type: attach one in CI with "
            "`umec attest --key KEY --type TYPE --predicate FILE IMAGE@DIGEST`.")


class AttestationSignatureInvalid(ImageAttestationError):
    check = "attestation.signature"
    hint = ("No key the policy trusts signed this attestation: attest with the policy's key, "
            "or add the signer's public key to the policy's attestation requirement.")


class AttestationSubjectMismatch(ImageAttestationError):
    check = "attestation.subject"
    hint = ("The attestation is about another image digest (copied from another image, or "
            "made before a rebuild): attest this exact digest.")


class AttestationPredicateMismatch(ImageAttestationError):
    check = "attestation.predicate"
    hint = ("The signed attestations do not have the predicate type or the predicate values "
            "the policy requires: check the type (--type) and the predicate CI attached.")


class PredicateTypeInvalid(ImageAttestationError):
    check = "attestation.type"
    hint = ("Name a predicate type as cosign does (slsaprovenance1, spdxjson, cyclonedx, custom, "
            "...) or give its URI.")


def predicate_type_uri(name: str) -> str:
    """cosign's ``ParsePredicateType``: a known name, else an absolute URI."""
    if name in PREDICATE_TYPES:
        return PREDICATE_TYPES[name]
    parts = urlsplit(name)
    if not parts.scheme or not (parts.netloc or parts.path) or any(c.isspace() for c in name):
        raise PredicateTypeInvalid(f"{name!r} is neither a known predicate type "
                                   f"({', '.join(sorted(PREDICATE_TYPES))}) nor a URI")
    return name


def attestation_tag(digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>.att``."""
    return _hex(digest, "image digest").join(("sha256-", ".att"))


def _hex(digest: object, what: str) -> str:
    if not (isinstance(digest, str) and len(digest) == 71 and digest.startswith("sha256:")
            and all(c in "0123456789abcdef" for c in digest[7:])):
        raise AttestationMalformed(f"{what} is not a sha256 digest: {digest!r}"[:200])
    return digest[7:]


# --- Go encoding/json of decoded JSON -----------------------------------------------------

def _go_float(value: float) -> str:
    """Go's ``json.Marshal`` of a float64 (shortest round trip; exponent form outside
    [1e-6, 1e21), written ``1e-7`` / ``1e+21``)."""
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        mantissa, _, exponent = repr(value).partition("e")
        exp = int(exponent)
        return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp)}"
    return format(Decimal(repr(value)).normalize(), "f")


def go_value_json(value: Any) -> str:
    """Go's compact ``json.Marshal`` of a value decoded from JSON into ``interface{}``: objects
    are Go maps (keys sorted), HTML-safe string escaping."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return go_json_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{go_json_string(k)}:{go_value_json(value[k])}"
                              for k in sorted(value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_value_json(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise AttestationMalformed(f"{what} is not JSON: {str(exc)[:120]}") from None


# A JSON string, or from an unterminated one to the end: it always matches at a quote, so
# scanning is linear (a pattern that can fail would rescan from every later quote).
_STRING = re.compile(rb'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_skeleton(data: bytes) -> bytes:
    """``data`` without its JSON strings: the structure, numbers and literals."""
    return _STRING.sub(b"", data)


def _nesting(skeleton: bytes) -> int:
    depth = deepest = 0
    for byte in skeleton.translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def bounded_loads(data: bytes, what: str, *, max_values: int = MAX_JSON_VALUES,
                  max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` after a pre-scan that bounds what it may build: at most ``max_values``
    arrays, objects and elements (counted as ``[``, ``{`` and ``,`` outside strings) and
    ``max_depth`` levels of nesting."""
    skeleton = json_skeleton(data)
    values = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{")
    if values > max_values:
        raise AttestationMalformed(f"{what} has {values} JSON values or more (limit "
                                   f"{max_values})")
    depth = _nesting(skeleton)
    if depth > max_depth:
        raise AttestationMalformed(f"{what} nests {depth} levels deep (limit {max_depth})")
    return _loads(data, what)


# --- statements ---------------------------------------------------------------------------

def _predicate(type_name: str, uri: str, raw: bytes, timestamp: str) -> Any:
    """The predicate cosign puts in the statement for ``--type type_name``."""
    if uri == CUSTOM:
        return {"Data": raw.decode("utf-8", "replace"), "Timestamp": timestamp}
    if type_name == "spdx":
        return raw.decode("utf-8", "replace")
    doc = _loads(raw, f"the {type_name} predicate")
    missing = [f for f in _REQUIRED_FIELDS.get(type_name, ())
               if not isinstance(doc, dict) or f not in doc]
    if missing:
        raise AttestationMalformed(f"the {type_name} predicate lacks required field(s) "
                                   f"{', '.join(missing)}")
    if type_name not in PREDICATE_TYPES and not isinstance(doc, dict):
        raise AttestationMalformed(f"a predicate of type {uri} must be a JSON object")
    return doc


def build_statement(type_name: str, predicate: bytes, *, repository: str, digest: str,
                    timestamp: str, statement_type: str = STATEMENT_V1) -> bytes:
    """The Statement bytes ``cosign attest --type type_name`` signs (see the module doc).
    ``timestamp`` (RFC 3339, UTC) is used by the ``custom`` type only; with
    ``statement_type=STATEMENT_V01`` the bytes are exactly cosign's."""
    uri = predicate_type_uri(type_name)
    # Struct order (in-toto-golang StatementHeader, Subject), then the predicate (a Go map for
    # decoded JSON; the custom predicate's struct fields Data, Timestamp happen to sort so).
    subject = ('[{"name":' + go_json_string(repository) + ',"digest":{"sha256":' +
               go_json_string(_hex(digest, "digest")) + "}}]")
    if statement_type not in STATEMENT_TYPES:
        raise AttestationMalformed(f"unknown statement type {statement_type!r}")
    return ('{"_type":' + go_json_string(statement_type) + ',"predicateType":' +
            go_json_string(uri) + ',"subject":' + subject + ',"predicate":' +
            go_value_json(_predicate(type_name, uri, predicate, timestamp)) + "}").encode()


@dataclass(frozen=True)
class Statement:
    """The parts of an in-toto Statement that verification and policies look at."""

    type: str
    predicate_type: str
    subjects: tuple[tuple[str, Mapping[str, str]], ...]   # (name, digest set)
    predicate: Any

    def names_digest(self, digest: str) -> bool:
        hex_digest = _hex(digest, "image digest").encode()
        return any(compare_digest(str(d.get("sha256", "")).encode(), hex_digest)
                   for _, d in self.subjects)


def _subject(index: int, item: Any) -> tuple[str, Mapping[str, str]]:
    if not isinstance(item, dict):
        raise AttestationMalformed(f"statement subject {index} is not an object")
    name, digests = item.get("name", ""), item.get("digest")
    if not isinstance(name, str) or not isinstance(digests, dict) or not digests or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
        raise AttestationMalformed(f"statement subject {index} needs a name and a digest set "
                                   f"of strings")
    return name, dict(digests)


def parse_statement(payload: bytes) -> Statement:
    """An in-toto Statement (v1 or v0.1); missing or mistyped fields are malformed. Parsed
    within bounds (:func:`bounded_loads`)."""
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise AttestationMalformed(f"the DSSE payload of {len(payload)} bytes exceeds "
                                   f"{MAX_ENVELOPE_BYTES}")
    doc = bounded_loads(payload, "the DSSE payload")
    if not isinstance(doc, dict) or doc.get("_type") not in STATEMENT_TYPES:
        kind = doc.get("_type") if isinstance(doc, dict) else None
        raise AttestationMalformed(f"the payload is not an in-toto Statement (_type "
                                   f"{str(kind)[:80]!r})")
    predicate_type, subjects = doc.get("predicateType"), doc.get("subject")
    if not isinstance(predicate_type, str) or not predicate_type:
        raise AttestationMalformed("the statement has no predicateType")
    if not isinstance(subjects, list) or not 1 <= len(subjects) <= MAX_SUBJECTS:
        raise AttestationMalformed(f"the statement needs 1..{MAX_SUBJECTS} subjects")
    return Statement(str(doc["_type"]), predicate_type,
                     tuple(_subject(i, s) for i, s in enumerate(subjects)),
                     doc.get("predicate"))


# --- DSSE ---------------------------------------------------------------------------------

def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding (lengths in bytes, ASCII decimal)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def envelope_json(payload_type: str, payload: bytes, signatures: Sequence[bytes]) -> bytes:
    """The envelope as sigstore's DSSE signer marshals it (Go struct order, empty keyid)."""
    sigs = ",".join('{"keyid":"","sig":' + go_json_string(base64.b64encode(s).decode()) + "}"
                    for s in signatures)
    return ('{"payloadType":' + go_json_string(payload_type) + ',"payload":' +
            go_json_string(base64.b64encode(payload).decode()) + ',"signatures":[' + sigs +
            "]}").encode()


def sign_envelope(payload: bytes, sign: Callable[[bytes], bytes],
                  payload_type: str = INTOTO_PAYLOAD_TYPE) -> bytes:
    """A one-signature envelope; ``sign`` signs the PAE bytes."""
    return envelope_json(payload_type, payload, [sign(pae(payload_type, payload))])


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[bytes, ...]


def _b64(value: Any, what: str, limit: int) -> bytes:
    """DSSE allows standard or URL-safe base64 (go-securesystemslib tries one, then the
    other); each alphabet alone, padded, nothing else; at most ``limit`` characters."""
    if not isinstance(value, str):
        raise AttestationMalformed(f"envelope {what} is not a string")
    if len(value) > limit:
        raise AttestationMalformed(f"envelope {what} has {len(value)} characters (limit "
                                   f"{limit})")
    text = value if ("+" in value or "/" in value) else value.translate(_URL_TO_STD)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationMalformed(f"envelope {what} is not base64") from None


def parse_envelope(raw: bytes) -> Envelope:
    """A DSSE envelope within bounds (module doc, step 1); the signatures are not checked
    and the payload is not parsed here."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise AttestationMalformed(f"envelope of {len(raw)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    outside = len(json_skeleton(raw))
    if outside > MAX_ENVELOPE_SKELETON:
        raise AttestationMalformed(f"the envelope has {outside} bytes outside its strings "
                                   f"(limit {MAX_ENVELOPE_SKELETON}): not a DSSE envelope")
    doc = _loads(raw, "the envelope")
    if not isinstance(doc, dict):
        raise AttestationMalformed("the envelope is not a JSON object")
    payload_type, signatures = doc.get("payloadType"), doc.get("signatures")
    if not isinstance(payload_type, str):
        raise AttestationMalformed("the envelope has no payloadType")
    if not isinstance(signatures, list) or not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise AttestationMalformed(f"the envelope needs 1..{MAX_SIGNATURES} signatures")
    if len(payload_type) > 256:
        raise AttestationMalformed("the envelope's payloadType is longer than 256 characters")
    sigs = tuple(_b64(s.get("sig") if isinstance(s, dict) else None, f"signature {i}",
                      MAX_SIGNATURE_CHARS) for i, s in enumerate(signatures))
    return Envelope(payload_type, _b64(doc.get("payload"), "payload", MAX_ENVELOPE_BYTES), sigs)


def _verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def envelope_signers(envelope: Envelope, keys: Mapping[str, PublicKey]) -> tuple[str, ...]:
    """The ids of the keys with a valid signature over the envelope's PAE."""
    message = pae(envelope.payload_type, envelope.payload)
    return tuple(kid for kid, key in keys.items()
                 if any(_verifies(key, sig, message) for sig in envelope.signatures))


@dataclass(frozen=True)
class EnvelopeVerdict:
    """One stored envelope checked against the trusted keys for one image digest.

    ``signers``: key ids whose signature verifies. ``statement`` is set only when every step
    passed; otherwise ``error`` names the step that failed (signature, payload, subject).
    ``claimed_type`` is the predicate type the envelope *claims*: the statement's when a
    trusted key signed it, else the layer's (unsigned) ``predicateType`` annotation, as the
    caller passes it; an unsigned payload is never parsed. It only says which requirement a
    failure is most relevant to, never admits.
    """

    layer: str                            # the layer (blob) digest in the .att manifest
    signers: tuple[str, ...]
    statement: Statement | None
    error: ImageAttestationError | None
    claimed_type: str | None = None


def verify_envelope(raw: bytes, keys: Mapping[str, PublicKey], *, image_digest: str,
                    layer: str = "", claimed_type: str | None = None) -> EnvelopeVerdict:
    """Steps 1-4 of the module doc for one envelope; never raises an ImageAttestationError.
    ``claimed_type``: the layer's predicateType annotation (a hint for failures)."""
    layer = layer or "sha256:" + hashlib.sha256(raw).hexdigest()
    claimed = claimed_type[:200] if claimed_type else None
    try:
        envelope = parse_envelope(raw)
    except ImageAttestationError as exc:
        return EnvelopeVerdict(layer, (), None, exc, claimed)
    signers = envelope_signers(envelope, keys)
    if not signers:
        return EnvelopeVerdict(layer, (), None, AttestationSignatureInvalid(
            f"attestation {layer} verifies with none of the trusted keys "
            f"({', '.join(sorted(keys)) or 'none'})"), claimed)
    try:
        if envelope.payload_type != INTOTO_PAYLOAD_TYPE:
            raise AttestationMalformed(f"payloadType is {envelope.payload_type[:80]!r}, not "
                                       f"{INTOTO_PAYLOAD_TYPE}")
        statement = parse_statement(envelope.payload)
        claimed = statement.predicate_type[:200]
        if not statement.names_digest(image_digest):
            named = ", ".join(f"sha256:{d.get('sha256', '?')}" for _, d in statement.subjects)
            raise AttestationSubjectMismatch(f"attestation {layer} is about {named[:300]}, "
                                             f"the image is {image_digest}")
    except ImageAttestationError as exc:
        return EnvelopeVerdict(layer, signers, None, exc, claimed)
    return EnvelopeVerdict(layer, signers, statement, None, claimed)


# --- the .att image -------------------------------------------------------------------------

def attestation_layer(envelope: bytes, predicate_type: str) -> SignatureLayer:
    """The layer cosign's ``static.NewAttestation`` makes (empty signature annotation)."""
    return SignatureLayer(envelope, {SIGNATURE_ANNOTATION: "", PREDICATE_ANNOTATION:
                                     predicate_type}, DSSE_MEDIA_TYPE)


def build_attestation_image(layers: Sequence[SignatureLayer]) -> SignatureImage:
    """The ``.att`` image: built exactly as the ``.sig`` image is."""
    return build_signature_image(layers)


@dataclass(frozen=True)
class AttestationLayerRef:
    """A DSSE layer descriptor of an ``.att`` manifest, before its blob is fetched."""

    digest: str
    size: int
    predicate_type: str | None            # the (unsigned) annotation: a hint, never evidence
    annotations: Mapping[str, str]


def attestation_layer_refs(manifest: Mapping[str, Any]) -> list[AttestationLayerRef]:
    """The DSSE layers of a parsed ``.att`` manifest (other media types are skipped)."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise AttestationMalformed("the .att manifest has no 'layers' list")
    if len(layers) > MAX_ATTESTATION_LAYERS:
        raise AttestationMalformed(f"the .att manifest has {len(layers)} layers "
                                   f"(limit {MAX_ATTESTATION_LAYERS})")
    refs = []
    for index, layer in enumerate(layers):
        ref = _layer_ref(index, layer)
        if ref is not None:
            refs.append(ref)
    return refs


def _layer_ref(index: int, layer: Any) -> AttestationLayerRef | None:
    if not isinstance(layer, dict) or layer.get("mediaType") != DSSE_MEDIA_TYPE:
        return None
    digest, size = layer.get("digest"), layer.get("size")
    annotations = layer.get("annotations") or {}
    _hex(digest, f".att layer {index} digest")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise AttestationMalformed(f".att layer {index} size {size!r} is not a positive "
                                   f"integer")
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise AttestationMalformed(f".att layer {index} annotations are not strings")
    kind = annotations.get(PREDICATE_ANNOTATION)
    return AttestationLayerRef(str(digest), size, kind, dict(annotations))


# --- facts a policy may ask about ---------------------------------------------------------

def _get(doc: Any, *path: str) -> Any:
    for name in path:
        doc = doc.get(name) if isinstance(doc, dict) else None
    return doc


def _repository(uri: Any) -> str | None:
    """``git+https://host/org/repo@refs/heads/main`` -> ``https://host/org/repo``."""
    if not isinstance(uri, str) or not uri:
        return None
    text = uri.removeprefix("git+")
    scheme, sep, rest = text.partition("://")
    rest = rest.split("@", 1)[0] if sep else text.split("@", 1)[0]
    return (f"{scheme}://{rest}" if sep else rest).removesuffix(".git")


# SLSA v1 build types whose source is externalParameters.workflow.repository: GitHub Actions
# workflows as slsa-github-generator and GitHub's artifact attestations describe them.
GITHUB_WORKFLOW_BUILD_TYPES = frozenset({
    "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1",
    "https://actions.github.io/buildtypes/workflow/v1"})


def _source_repository(predicate_type: str, predicate: Any) -> str | None:
    """The repository the build *was of*, as its build type defines it (never a dependency:
    resolvedDependencies / materials list whatever the build fetched). SLSA v1: GitHub
    workflow build types, ``externalParameters.workflow.repository``; any other build type,
    ``externalParameters.source.repository`` (what ``umec provenance`` writes). v0.2:
    ``invocation.configSource.uri`` (slsa-github-generator, slsa-verifier)."""
    if predicate_type == SLSA_V1:
        params = _get(predicate, "buildDefinition", "externalParameters")
        build_type = _get(predicate, "buildDefinition", "buildType")
        field = "workflow" if build_type in GITHUB_WORKFLOW_BUILD_TYPES else "source"
        return _repository(_get(params, field, "repository"))
    return _repository(_get(predicate, "invocation", "configSource", "uri"))


def _provenance_facts(predicate_type: str, predicate: Any) -> dict[str, Any]:
    """``source_repository`` is what a policy's ``sourceRepository`` compares;
    ``source_repositories`` every repository named (source and dependencies), for display."""
    if predicate_type == SLSA_V1:
        deps = _get(predicate, "buildDefinition", "resolvedDependencies")
        deps = deps if isinstance(deps, list) else []
        sources = [_get(predicate, "buildDefinition", "externalParameters", "source",
                        "repository"),
                   _get(predicate, "buildDefinition", "externalParameters", "workflow",
                        "repository"),
                   *(d.get("uri") for d in deps if isinstance(d, dict))]
        commits = [_get(d, "digest", "gitCommit") or _get(d, "digest", "sha1") for d in deps]
        builder = _get(predicate, "runDetails", "builder", "id")
        build_type = _get(predicate, "buildDefinition", "buildType")
    else:
        materials = _get(predicate, "materials")
        materials = materials if isinstance(materials, list) else []
        sources = [_get(predicate, "invocation", "configSource", "uri"),
                   *(m.get("uri") for m in materials if isinstance(m, dict))]
        commits = [_get(predicate, "invocation", "configSource", "digest", "sha1"),
                   *(_get(m, "digest", "sha1") for m in materials)]
        builder, build_type = _get(predicate, "builder", "id"), _get(predicate, "buildType")
    repos = sorted({r for r in map(_repository, sources) if r})
    return {"builder_id": builder if isinstance(builder, str) else None,
            "build_type": build_type if isinstance(build_type, str) else None,
            "source_repository": _source_repository(predicate_type, predicate),
            "source_repositories": repos,
            "commits": sorted({c for c in commits if isinstance(c, str) and c})}


def _sbom_facts(predicate_type: str, predicate: Any) -> dict[str, Any]:
    if predicate_type == SPDX:
        packages = _get(predicate, "packages")
        version = _get(predicate, "spdxVersion")
        return {"format": "spdx", "version": version if isinstance(version, str) else None,
                "packages": len(packages) if isinstance(packages, list) else 0}
    components = _get(predicate, "components")
    version = _get(predicate, "specVersion")
    return {"format": "cyclonedx", "version": version if isinstance(version, str) else None,
            "packages": len(components) if isinstance(components, list) else 0}


def statement_facts(statement: Statement) -> dict[str, Any]:
    """What a policy may compare: the predicate type, and per kind the provenance or SBOM
    facts (None where the predicate lacks them)."""
    facts: dict[str, Any] = {"predicate_type": statement.predicate_type, "builder_id": None,
                             "build_type": None, "source_repository": None,
                             "source_repositories": [], "commits": [],
                             "sbom": None}
    if statement.predicate_type in PROVENANCE_TYPES:
        facts.update(_provenance_facts(statement.predicate_type, statement.predicate))
    elif statement.predicate_type in SBOM_TYPES:
        facts["sbom"] = _sbom_facts(statement.predicate_type, statement.predicate)
    return facts
