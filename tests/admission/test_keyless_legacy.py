"""Keyless legacy ``.sig`` signatures (Fulcio certificate, chain and Rekor SET in the layer's
annotations) verified offline: :mod:`admission.core.keyless`.

The signatures are made as ``cosign sign`` (keyless) makes them, by
:mod:`tests.support.cosign_keyless` with a :class:`MiniSigstore`'s CA and Rekor. Each attack
differs from an accepted signature in one part and is asserted on the check id that caught it,
so a signature refused for another reason fails the test. The real-world vector is the SET of a
signature cosign made against the public Rekor (``../shared/fixtures/cosign``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import char

from admission.core.cosign import (
    CERTIFICATE_ANNOTATION,
    CHAIN_ANNOTATION,
    REKOR_BUNDLE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SignatureLayer,
    go_json,
    parse_containers_image_signature,
)
from admission.core.errors import AdmissionError
from admission.core.keyless import (
    KeylessAuthority,
    KeylessMaterialMalformed,
    KeylessTrustRoot,
    TrustRootInvalid,
    der_utf8string,
    parse_rekor_body,
    parse_rekor_bundle,
    parse_trusted_root,
    verify_legacy_keyless,
    verify_set,
)
from admission.core.verify import (
    KeylessIdentity,
    KeylessVerificationFailed,
    VerifiedSignature,
)
from tests.support.cosign_keyless import KeylessSignature, pem, sign_keyless, sign_set
from tests.support.mini_sigstore import (
    EPOCH,
    CertificateAuthority,
    MiniSigstore,
    TransparencyLog,
    hashedrekord_body,
)

REF = "registry.example/tenant-a/app"
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
EMAIL = "ci@example.org"
WORKFLOW = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.example"
SIGNER = KeylessIdentity(EMAIL, ISSUER)
SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "cosign"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/fixtures/cosign")


@pytest.fixture(scope="module")
def mini() -> MiniSigstore:
    return MiniSigstore()


@pytest.fixture(scope="module")
def root(mini: MiniSigstore) -> KeylessTrustRoot:
    return parse_trusted_root(mini.trusted_root())


@pytest.fixture(scope="module")
def signed(mini: MiniSigstore) -> KeylessSignature:
    return sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER)


def _verify(layer: SignatureLayer, root: KeylessTrustRoot, *identities: KeylessIdentity,
            digest: str = DIGEST) -> VerifiedSignature:
    return verify_legacy_keyless(layer, KeylessAuthority(root, identities or (SIGNER,)),
                                 image_digest=digest)


def _refused(layer: SignatureLayer, root: KeylessTrustRoot, check: str, because: str = "",
             *identities: KeylessIdentity, digest: str = DIGEST) -> AdmissionError:
    with pytest.raises(AdmissionError) as caught:
        _verify(layer, root, *identities, digest=digest)
    assert caught.value.check == check, (caught.value.check, caught.value.detail)
    assert because in caught.value.detail, caught.value.detail
    return caught.value


def _root_with(mini: MiniSigstore, edit: dict[str, object]) -> KeylessTrustRoot:
    """The mini root with ``edit`` applied: dotted path -> value (list indices as digits)."""
    doc = json.loads(mini.trusted_root())
    for path, value in edit.items():
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return parse_trusted_root(json.dumps(doc).encode())


# --- accepted ---------------------------------------------------------------------------------

def test_accepts_what_cosign_writes(signed: KeylessSignature, root: KeylessTrustRoot) -> None:
    result = _verify(signed.layer(), root)
    assert result == VerifiedSignature(DIGEST, SIGNER.key_id, "legacy", EMAIL, REF)
    assert result.key_id == f"keyless:{ISSUER} {EMAIL}"


def test_annotation_formats_are_cosigns(signed: KeylessSignature) -> None:
    """Go's json.Marshal of RekorBundle: compact, declaration order; PEM certificates."""
    notes = signed.annotations()
    assert notes[REKOR_BUNDLE_ANNOTATION].startswith('{"SignedEntryTimestamp":"')
    assert list(json.loads(notes[REKOR_BUNDLE_ANNOTATION])["Payload"]) == \
        ["body", "integratedTime", "logIndex", "logID"]
    assert notes[CERTIFICATE_ANNOTATION].startswith("-----BEGIN CERTIFICATE-----\n")
    assert notes[CHAIN_ANNOTATION].count("BEGIN CERTIFICATE") == 2


def test_accepts_uri_and_username_subjects_and_picks_the_matching_identity(
        mini: MiniSigstore, root: KeylessTrustRoot) -> None:
    uri = sign_keyless(mini, REF, DIGEST, identity=WORKFLOW, issuer=ISSUER)
    wanted = KeylessIdentity(WORKFLOW, ISSUER)
    result = _verify(uri.layer(), root, SIGNER, KeylessIdentity(WORKFLOW, "https://x.example"),
                     wanted)
    assert (result.identity, result.key_id) == (WORKFLOW, wanted.key_id)
    user = sign_keyless(mini, REF, DIGEST, identity="user:builder", issuer=ISSUER)
    assert _verify(user.layer(), root, KeylessIdentity("builder", ISSUER)).identity == "builder"


def test_either_issuer_extension_alone_is_read(mini: MiniSigstore,
                                               root: KeylessTrustRoot) -> None:
    v1_only = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER, issuer_v2=None)
    v2_only = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER, issuer_v1=None)
    assert _verify(v1_only.layer(), root).identity == EMAIL
    assert _verify(v2_only.layer(), root).identity == EMAIL


def test_chain_annotation_is_optional_when_the_root_lists_the_intermediate(
        signed: KeylessSignature, root: KeylessTrustRoot) -> None:
    assert _verify(signed.layer(**{CHAIN_ANNOTATION: None}), root).identity == EMAIL


def test_signature_with_line_breaks_is_read_as_go_reads_it(signed: KeylessSignature,
                                                           root: KeylessTrustRoot) -> None:
    text = base64.b64encode(signed.signature).decode()
    wrapped = "\r\n".join(text[i:i + 16] for i in range(0, len(text), 16)) + "\n"
    assert _verify(signed.layer(**{SIGNATURE_ANNOTATION: wrapped}), root).identity == EMAIL
    _refused(signed.layer(**{SIGNATURE_ANNOTATION: text[:8] + " " + text[8:]}), root,
             "signature.keyless.malformed", "not base64")


def test_real_cosign_set_from_the_public_rekor_verifies() -> None:
    """A key-based cosign signature logged in rekor.sigstore.dev: its SET, canonicalised our
    way, verifies under the public Rekor key (and not once a field moves)."""
    layer = parse_containers_image_signature(
        (SHARED / "dir-img-cosign-key-rekor-valid" / "signature-1").read_bytes())
    rekor = serialization.load_pem_public_key((SHARED / "rekor.pub").read_bytes())
    spki = rekor.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    trusted = parse_trusted_root(json.dumps({
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [{"publicKey": {"rawBytes": base64.b64encode(spki).decode(),
                                 "validFor": {"start": "2021-01-12T11:53:27Z"}}}],
        "certificateAuthorities": [json.loads(MiniSigstore().trusted_root())[
            "certificateAuthorities"][0]]}).encode())
    bundle = parse_rekor_bundle(layer.annotations[REKOR_BUNDLE_ANNOTATION])
    verify_set(bundle, trusted)
    entry = parse_rekor_body(bundle.body)
    assert entry.kind == "hashedrekord"
    assert entry.sha256 == hashlib.sha256(layer.payload).hexdigest()
    assert entry.signature == layer.signature
    moved = parse_rekor_bundle(layer.annotations[REKOR_BUNDLE_ANNOTATION].replace(
        f'"logIndex":{bundle.log_index}', f'"logIndex":{bundle.log_index + 1}'))
    with pytest.raises(KeylessVerificationFailed) as caught:
        verify_set(moved, trusted)
    assert caught.value.check == "signature.keyless.set"


# --- attacks ----------------------------------------------------------------------------------

def test_set_signed_by_another_key_is_refused(mini: MiniSigstore,
                                              root: KeylessTrustRoot) -> None:
    forged = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER,
                          set_key=ec.generate_private_key(ec.SECP256R1()))
    _refused(forged.layer(), root, "signature.keyless.set", "does not verify")


def test_entry_in_a_log_the_root_does_not_list_is_refused(mini: MiniSigstore,
                                                          root: KeylessTrustRoot) -> None:
    other = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER,
                         tlog=TransparencyLog("rekor.evil.test"))
    _refused(other.layer(), root, "signature.keyless.set", "no transparency log")


def test_moved_integrated_time_breaks_the_set(signed: KeylessSignature,
                                              root: KeylessTrustRoot) -> None:
    moved = KeylessSignature(**{**signed.__dict__,
                                "integrated_time": signed.integrated_time - 3600})
    _refused(moved.layer(), root, "signature.keyless.set", "does not verify")


@pytest.mark.parametrize("shift", [timedelta(minutes=11), timedelta(minutes=-2)])
def test_integrated_time_outside_the_certificate_validity_is_refused(
        mini: MiniSigstore, root: KeylessTrustRoot, shift: timedelta) -> None:
    """Logged 11 minutes after a 10-minute certificate started (expired), or 2 minutes before
    it starts (not yet valid): Rekor vouches for a time the certificate does not cover."""
    late = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER,
                        signed_at=EPOCH + shift, not_before=EPOCH)
    _refused(late.layer(), root, "signature.keyless.validity", "outside the certificate")


def test_certificate_from_another_ca_is_refused(mini: MiniSigstore,
                                                root: KeylessTrustRoot) -> None:
    rogue = CertificateAuthority.create("rogue")
    forged = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER, ca=rogue)
    _refused(forged.layer(), root, "signature.keyless.chain", "does not chain")
    # Offering the real intermediate and root in the chain annotation changes nothing.
    with_real_chain = forged.layer(**{CHAIN_ANNOTATION: pem(mini.ca.intermediate,
                                                            mini.ca.root)})
    _refused(with_real_chain, root, "signature.keyless.chain", "does not chain")


def test_intermediate_only_in_the_chain_annotation_is_not_an_anchor(
        mini: MiniSigstore) -> None:
    """A root listing only the Fulcio root: the chain annotation may supply the
    intermediate (as containers/image allows), but a self-made 'intermediate' may not."""
    only_root = _root_with(mini, {"certificateAuthorities.0.certChain.certificates": [
        json.loads(mini.trusted_root())["certificateAuthorities"][0]["certChain"][
            "certificates"][1]]})
    good = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER)
    assert _verify(good.layer(), only_root).identity == EMAIL
    _refused(good.layer(**{CHAIN_ANNOTATION: None}), only_root, "signature.keyless.chain")


def test_leaf_without_code_signing_is_refused(mini: MiniSigstore,
                                              root: KeylessTrustRoot) -> None:
    tls = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER,
                       eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    _refused(tls.layer(), root, "signature.keyless.chain", "code signing")
    none = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER, eku=None)
    _refused(none.layer(), root, "signature.keyless.chain", "code signing")


def test_retired_ca_or_rekor_key_is_not_trusted_after_retirement(
        mini: MiniSigstore, signed: KeylessSignature) -> None:
    before = (EPOCH - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    retired_ca = _root_with(mini, {"certificateAuthorities.0.validFor.end": before})
    _refused(signed.layer(), retired_ca, "signature.keyless.chain", "no Fulcio CA")
    retired_log = _root_with(mini, {"tlogs.0.publicKey.validFor.end": before})
    _refused(signed.layer(), retired_log, "signature.keyless.set", "not valid at")


def test_subject_or_issuer_mismatch_is_refused(signed: KeylessSignature,
                                               root: KeylessTrustRoot) -> None:
    _refused(signed.layer(), root, "signature.keyless.identity", "matches none",
             KeylessIdentity("mallory@example.org", ISSUER))
    _refused(signed.layer(), root, "signature.keyless.identity", "matches none",
             KeylessIdentity(EMAIL, "https://accounts.example"))
    _refused(signed.layer(), root, "signature.keyless.identity", "matches none",
             KeylessIdentity(EMAIL.upper(), ISSUER))


def test_regexp_identities_match_as_cosigns_flags(mini: MiniSigstore,
                                                  root: KeylessTrustRoot) -> None:
    """``--certificate-identity-regexp`` / ``--certificate-oidc-issuer-regexp``: searched for
    (Go's MatchString), the subject reported is the certificate's, not the pattern."""
    uri = sign_keyless(mini, REF, DIGEST, identity=WORKFLOW, issuer=ISSUER)
    pattern = KeylessIdentity(r"^https://github\.com/acme/", r"^https://token\.actions\.",
                              identity_regexp=True, issuer_regexp=True)
    result = _verify(uri.layer(), root, pattern)
    assert (result.identity, result.key_id) == (WORKFLOW, pattern.key_id)
    assert pattern.key_id == r"keyless:~^https://token\.actions\. ~^https://github\.com/acme/"
    assert _verify(uri.layer(), root, KeylessIdentity("acme/app", ISSUER,
                                                      identity_regexp=True)).identity == WORKFLOW
    for refused in (KeylessIdentity(r"^https://github\.com/evil/", ISSUER, identity_regexp=True),
                    KeylessIdentity(WORKFLOW, r"^https://accounts\.", issuer_regexp=True),
                    KeylessIdentity(r"acme/app$", ISSUER, identity_regexp=True)):
        _refused(uri.layer(), root, "signature.keyless.identity", "matches none", refused)
    # A pattern flag off means exact: the same text is refused as an exact subject.
    _refused(uri.layer(), root, "signature.keyless.identity", "matches none",
             KeylessIdentity("acme/app", ISSUER))
    with pytest.raises(ValueError, match="not a regular expression"):
        KeylessIdentity("(", ISSUER, identity_regexp=True)


@settings(max_examples=200, deadline=None)
@given(subject=st.text(min_size=1, max_size=30), issuer=st.text(
    alphabet=st.characters(categories=["L", "N", "P"]), min_size=1, max_size=30),
    others=st.lists(st.text(max_size=20), max_size=3))
def test_identity_match_property(subject: str, issuer: str, others: list[str]) -> None:
    """Exact identities match only equal text; an escaped, anchored pattern matches exactly
    what the exact identity matches; what matched is one of the certificate's subjects."""
    import re
    exact = KeylessIdentity(subject, issuer)
    pattern = KeylessIdentity("^" + re.escape(subject) + r"\Z", "^" + re.escape(issuer) + r"\Z",
                              identity_regexp=True, issuer_regexp=True)
    subjects = [*others, subject]
    assert exact.matches(subjects, issuer) == subject
    assert pattern.matches(subjects, issuer) == subject
    assert exact.matches(subjects, issuer + "x") is None
    assert pattern.matches(subjects, issuer + "x") is None
    expected = subject if subject in others else None
    assert exact.matches(others, issuer) == expected == pattern.matches(others, issuer)


def test_disagreeing_issuer_extensions_are_refused(mini: MiniSigstore,
                                                   root: KeylessTrustRoot) -> None:
    two = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER,
                       issuer_v1="https://evil.example")
    _refused(two.layer(), root, "signature.keyless.malformed", "disagree")
    none = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER, issuer_v1=None,
                        issuer_v2=None)
    _refused(none.layer(), root, "signature.keyless.malformed", "no Fulcio OIDC issuer")


def test_rekor_entry_for_another_signature_is_refused(mini: MiniSigstore,
                                                      signed: KeylessSignature,
                                                      root: KeylessTrustRoot) -> None:
    """The attacker's own valid logged signature (same payload) lends its SET to ours."""
    theirs = sign_keyless(mini, REF, DIGEST, identity=EMAIL, issuer=ISSUER)
    mixed = signed.layer(**{REKOR_BUNDLE_ANNOTATION: theirs.bundle_annotation()})
    _refused(mixed, root, "signature.keyless.tlog_entry", "another signature")
    # Their signature and bundle, our certificate: the entry logs their certificate.
    swapped = theirs.layer(**{CERTIFICATE_ANNOTATION: pem(signed.leaf)})
    _refused(swapped, root, "signature.keyless.tlog_entry", "another certificate")


def test_rekor_entry_for_another_payload_is_refused(mini: MiniSigstore,
                                                    signed: KeylessSignature,
                                                    root: KeylessTrustRoot) -> None:
    """A logged signature of another image's payload, moved onto this image's payload."""
    other = sign_keyless(mini, REF, "sha256:" + "1" * 64, identity=EMAIL, issuer=ISSUER)
    moved = SignatureLayer(signed.payload, other.annotations())
    _refused(moved, root, "signature.keyless.tlog_entry", "not this payload")


def test_signature_for_another_digest_is_refused(mini: MiniSigstore,
                                                 root: KeylessTrustRoot) -> None:
    other = sign_keyless(mini, REF, "sha256:" + "2" * 64, identity=EMAIL, issuer=ISSUER)
    _refused(other.layer(), root, "signature.digest")


def test_entry_logging_a_key_instead_of_the_certificate_is_refused(
        mini: MiniSigstore, signed: KeylessSignature, root: KeylessTrustRoot) -> None:
    body = json.loads(signed.body)
    body["spec"]["signature"]["publicKey"]["content"] = base64.b64encode(
        signed.leaf.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    tampered = KeylessSignature(**{**signed.__dict__, "body": raw, "set_signature": sign_set(
        mini.tlog.key, raw, signed.integrated_time, signed.log_id, signed.log_index)})
    _refused(tampered.layer(), root, "signature.keyless.tlog_entry", "not a certificate")


def test_signature_the_leaf_did_not_make_is_refused_even_if_logged(
        mini: MiniSigstore, signed: KeylessSignature, root: KeylessTrustRoot) -> None:
    """The log vouches for what it was given, not that the signature verifies: an entry
    logging another key's signature with our certificate (and its SET) is still refused."""
    other = ec.generate_private_key(ec.SECP256R1()).sign(signed.payload,
                                                          ec.ECDSA(hashes.SHA256()))
    body = hashedrekord_body(signed.leaf, other, hashlib.sha256(signed.payload).digest())
    index = mini.tlog.append(body)
    forged = KeylessSignature(**{**signed.__dict__, "signature": other, "body": body,
                                 "log_index": index, "set_signature": sign_set(
                                     mini.tlog.key, body, signed.integrated_time,
                                     signed.log_id, index)})
    _refused(forged.layer(), root, "signature.invalid", "does not verify")


@pytest.mark.parametrize(("annotation", "value", "because"), [
    (CERTIFICATE_ANNOTATION, None, "has no dev.sigstore.cosign/certificate"),
    (REKOR_BUNDLE_ANNOTATION, None, "has no dev.sigstore.cosign/bundle"),
    (CERTIFICATE_ANNOTATION, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
     "not PEM"),
    (CERTIFICATE_ANNOTATION, "not a certificate", "not PEM"),
    (CHAIN_ANNOTATION, "garbage", "not PEM"),
    (REKOR_BUNDLE_ANNOTATION, "{", "not JSON"),
    (REKOR_BUNDLE_ANNOTATION, "[]", "exactly the fields"),
    (SIGNATURE_ANNOTATION, "%%%", "not base64"),
])
def test_missing_or_garbled_annotations_are_malformed(
        signed: KeylessSignature, root: KeylessTrustRoot, annotation: str,
        value: str | None, because: str) -> None:
    _refused(signed.layer(**{annotation: value}), root, "signature.keyless.malformed", because)


def test_two_leaf_certificates_and_bundle_field_games_are_malformed(
        signed: KeylessSignature, root: KeylessTrustRoot) -> None:
    _refused(signed.layer(**{CERTIFICATE_ANNOTATION: pem(signed.leaf, signed.leaf)}), root,
             "signature.keyless.malformed", "not one")
    doc: dict[str, Any] = json.loads(signed.bundle_annotation())
    edits: list[tuple[dict[str, Any], str]] = [
            ({"Payload": {**doc["Payload"], "extra": 1}}, "exactly the fields"),
            ({"Payload": {**doc["Payload"], "integratedTime": 1.5}}, "integer"),
            ({"Payload": {**doc["Payload"], "integratedTime": -1}}, "integer"),
            ({"Payload": {**doc["Payload"], "logIndex": 2**53}}, "integer"),
            ({"Payload": {**doc["Payload"], "logID": doc["Payload"]["logID"].upper()}}, "hex"),
            ({"Extra": 1}, "exactly the fields")]
    for edit, because in edits:
        text = json.dumps({**doc, **edit})
        _refused(signed.layer(**{REKOR_BUNDLE_ANNOTATION: text}), root,
                 "signature.keyless.malformed", because)
    duplicated = signed.bundle_annotation()[:-1] + ',"SignedEntryTimestamp":"AA=="}'
    _refused(signed.layer(**{REKOR_BUNDLE_ANNOTATION: duplicated}), root,
             "signature.keyless.malformed", "duplicate")


def test_trust_root_problems_are_typed() -> None:
    for raw, because in [(b"{", "not JSON"), (b"{}", "mediaType"),
                         (b'{"mediaType":"application/vnd.dev.sigstore.trustedroot+json"}',
                          "no certificateAuthorities")]:
        with pytest.raises(TrustRootInvalid, match=because):
            parse_trusted_root(raw)
    doc = json.loads(MiniSigstore().trusted_root())
    doc["tlogs"][0]["publicKey"]["rawBytes"] = base64.b64encode(b"junk").decode()
    with pytest.raises(TrustRootInvalid, match="publicKey"):
        parse_trusted_root(json.dumps(doc).encode())


# --- properties of the parsers ----------------------------------------------------------------

_b64text = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=12) | _b64text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(body=_b64text, sig=st.binary(min_size=1, max_size=80),
       when=st.integers(0, 2**53 - 1), index=st.integers(0, 2**53 - 1),
       log_id=st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_rekor_bundle_round_trips_and_canonicalises_as_rfc8785(
        body: str, sig: bytes, when: int, index: int, log_id: str) -> None:
    text = go_json({"SignedEntryTimestamp": base64.b64encode(sig).decode(),
                    "Payload": {"body": body, "integratedTime": when, "logIndex": index,
                                "logID": log_id}})
    parsed = parse_rekor_bundle(text)
    assert (parsed.signed_entry_timestamp, parsed.body, parsed.integrated_time,
            parsed.log_index, parsed.log_id) == (sig, body, when, index, log_id)
    assert parsed.canonical_payload() == rfc8785.dumps(
        {"body": body, "integratedTime": when, "logID": log_id, "logIndex": index})


@settings(max_examples=300, deadline=None)
@given(doc=_json_values)
def test_rekor_bundle_parser_gives_a_bundle_or_a_typed_error(doc: object) -> None:
    for text in (json.dumps(doc), json.dumps({"SignedEntryTimestamp": "AA==", "Payload": doc})):
        with contextlib.suppress(KeylessMaterialMalformed):
            parse_rekor_bundle(text)


@settings(max_examples=300, deadline=None)
@given(doc=_json_values, raw=st.binary(max_size=64))
def test_rekor_body_parser_gives_an_entry_or_a_typed_error(doc: object, raw: bytes) -> None:
    for body in (base64.b64encode(json.dumps(doc).encode()).decode(),
                 base64.b64encode(raw).decode(), raw.decode("latin-1")):
        with contextlib.suppress(KeylessMaterialMalformed):
            parse_rekor_body(body)


@settings(max_examples=200, deadline=None)
@given(doc=_json_values)
def test_trust_root_parser_gives_a_root_or_a_typed_error(doc: object) -> None:
    wrapped = {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
               "tlogs": [doc], "certificateAuthorities": [doc]}
    for raw in (json.dumps(doc).encode(), json.dumps(wrapped).encode()):
        with contextlib.suppress(TrustRootInvalid):
            parse_trusted_root(raw)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_der_utf8string_round_trips_with_pyasn1(text: str) -> None:
    try:
        encoded = der_encoder.encode(char.UTF8String(text))
    except UnicodeEncodeError:  # lone surrogates have no UTF-8
        return
    assert der_utf8string(encoded) == text


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=40))
def test_der_utf8string_on_any_bytes_is_text_or_value_error(data: bytes) -> None:
    try:
        text = der_utf8string(data)
    except ValueError:
        return
    assert der_encoder.encode(char.UTF8String(text)) == data  # only minimal DER is accepted


# --- fuzz: any annotation of an accepted layer replaced -> accepted only if unchanged ----------

_mini_for_fuzz = MiniSigstore()
_fuzz_signed = sign_keyless(_mini_for_fuzz, REF, DIGEST, identity=EMAIL, issuer=ISSUER)
_fuzz_root = parse_trusted_root(_mini_for_fuzz.trusted_root())
_fuzz_paths = ["SignedEntryTimestamp", "Payload.body", "Payload.integratedTime",
               "Payload.logIndex", "Payload.logID"]


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(_fuzz_paths), value=_json_values)
def test_fuzz_a_mutated_bundle_is_a_typed_refusal(path: str, value: object) -> None:
    doc = json.loads(_fuzz_signed.bundle_annotation())
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    layer = _fuzz_signed.layer(**{REKOR_BUNDLE_ANNOTATION: json.dumps(doc)})
    try:
        result = _verify(layer, _fuzz_root)
    except KeylessVerificationFailed:
        return
    assert doc == json.loads(_fuzz_signed.bundle_annotation()), (path, value)
    assert result.identity == EMAIL
