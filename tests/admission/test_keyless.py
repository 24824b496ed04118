"""Keyless (Fulcio/Rekor) bundle verification against a self-built Sigstore instance.

:mod:`tests.support.mini_sigstore` plays Fulcio, the CT log and Rekor with keys it owns, so
``verify_bundle_keyless`` gets a positive test offline and each negative differs from the
accepted bundle in exactly one part. Every rejection is asserted on the check that caught it
(the sigstore-python message carried in the typed error), so a bundle rejected for a reason
other than the one under test fails the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.core.errors import AdmissionError
from admission.core.verify import (
    KeylessIdentity,
    KeylessVerificationFailed,
    PayloadDigestMismatch,
    VerifiedSignature,
    verify_bundle_keyless,
)
from tests.support.mini_sigstore import (
    EPOCH,
    CertificateAuthority,
    CTLog,
    MiniSigstore,
    TransparencyLog,
)

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
EMAIL = "ci@example.org"
WORKFLOW = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.example"
SIGNER = KeylessIdentity(EMAIL, ISSUER)


@pytest.fixture(scope="module")
def mini() -> MiniSigstore:
    return MiniSigstore()


@pytest.fixture(scope="module")
def root(mini: MiniSigstore) -> bytes:
    return mini.trusted_root()


@pytest.fixture(scope="module")
def bundle(mini: MiniSigstore) -> bytes:
    return mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER)


def _verify(bundle: bytes, root: bytes, *identities: KeylessIdentity,
            manifest: bytes = MANIFEST) -> VerifiedSignature:
    return verify_bundle_keyless(bundle, manifest,
                                 image_digest="sha256:" + hashlib.sha256(manifest).hexdigest(),
                                 trusted_root=root, identities=identities or (SIGNER,))


def _rejected(bundle: bytes, root: bytes, because: str, *identities: KeylessIdentity,
              manifest: bytes = MANIFEST) -> KeylessVerificationFailed:
    with pytest.raises(KeylessVerificationFailed) as caught:
        _verify(bundle, root, *identities, manifest=manifest)
    assert because in caught.value.detail, caught.value.detail
    assert caught.value.check == "signature.keyless"
    return caught.value


def _edit(bundle: bytes, change: dict[str, object]) -> bytes:
    """The bundle with fields replaced; keys are dotted paths (list indices as digits)."""
    doc = json.loads(bundle)
    for path, value in change.items():
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return json.dumps(doc).encode()


# --- positive -----------------------------------------------------------------------------

def test_accepts_the_bundle_for_its_identity_and_issuer(bundle: bytes, root: bytes) -> None:
    result = _verify(bundle, root)
    assert result == VerifiedSignature(DIGEST, SIGNER.key_id, "bundle", EMAIL)


def test_accepts_a_uri_identity_and_picks_the_matching_one_of_several(
        mini: MiniSigstore, root: bytes) -> None:
    raw = mini.sign(MANIFEST, identity=WORKFLOW, issuer=ISSUER)
    result = _verify(raw, root, SIGNER, KeylessIdentity(WORKFLOW, "https://other.example"),
                     KeylessIdentity(WORKFLOW, ISSUER))
    assert result.identity == WORKFLOW
    assert result.key_id == KeylessIdentity(WORKFLOW, ISSUER).key_id


def test_the_inclusion_proof_is_a_real_path(bundle: bytes) -> None:
    """Guard against a degenerate log: the entry sits inside a tree with a multi-hash path."""
    proof = json.loads(bundle)["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    assert int(proof["treeSize"]) > int(proof["logIndex"]) + 1 and len(proof["hashes"]) >= 2


# --- the signer ---------------------------------------------------------------------------

def test_rejects_another_identity(bundle: bytes, root: bytes) -> None:
    _rejected(bundle, root, "SANs do not match", KeylessIdentity("mallory@example.org", ISSUER))


def test_rejects_another_issuer(bundle: bytes, root: bytes) -> None:
    _rejected(bundle, root, "OIDCIssuer does not match",
              KeylessIdentity(EMAIL, "https://accounts.example"))


def test_regexp_identities_for_bundles(mini: MiniSigstore, root: bytes) -> None:
    raw = mini.sign(MANIFEST, identity=WORKFLOW, issuer=ISSUER)
    pattern = KeylessIdentity(r"^https://github\.com/acme/", r"token\.actions",
                              identity_regexp=True, issuer_regexp=True)
    result = _verify(raw, root, pattern)
    assert (result.identity, result.key_id) == (WORKFLOW, pattern.key_id)
    _rejected(raw, root, "does not match",
              KeylessIdentity(r"^https://github\.com/evil/", ISSUER, identity_regexp=True))
    _rejected(raw, root, "does not match",
              KeylessIdentity(WORKFLOW, r"^https://accounts\.", issuer_regexp=True))


def test_rejects_with_no_identities_configured(bundle: bytes, root: bytes) -> None:
    with pytest.raises(KeylessVerificationFailed, match="no keyless identities"):
        verify_bundle_keyless(bundle, MANIFEST, image_digest=DIGEST, trusted_root=root,
                              identities=[])


# --- the signed object --------------------------------------------------------------------

def test_rejects_a_bundle_for_another_digest(mini: MiniSigstore, root: bytes) -> None:
    other = mini.sign(b'{"schemaVersion":2,"layers":[]}', identity=EMAIL, issuer=ISSUER)
    _rejected(other, root, "message digest mismatch")
    with pytest.raises(PayloadDigestMismatch):  # manifest bytes that are not the digest
        verify_bundle_keyless(other, b"other bytes", image_digest=DIGEST, trusted_root=root,
                              identities=[SIGNER])


def test_rejects_a_tampered_signature(bundle: bytes, root: bytes) -> None:
    signature = bytearray(base64.b64decode(json.loads(bundle)["messageSignature"]["signature"]))
    signature[-1] ^= 0x01  # last byte of s: still DER, no longer valid
    _rejected(_edit(bundle, {"messageSignature.signature":
                             base64.b64encode(bytes(signature)).decode()}),
              root, "Signature is invalid for input")


def test_rejects_a_log_entry_for_another_signature(mini: MiniSigstore, bundle: bytes,
                                                   root: bytes) -> None:
    """A valid, logged entry of another signing event, pasted in (CVE-2022-36056 shape)."""
    other = json.loads(mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER))
    entry = other["verificationMaterial"]["tlogEntries"][0]
    _rejected(_edit(bundle, {"verificationMaterial.tlogEntries": [entry]}), root,
              "inconsistent with other materials")


# --- the certificate ----------------------------------------------------------------------

def test_rejects_a_certificate_from_a_ca_not_in_the_root(mini: MiniSigstore,
                                                         root: bytes) -> None:
    rogue = CertificateAuthority.create("rogue")
    raw = mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER, ca=rogue)
    _rejected(raw, root, "failed to build timestamp certificate chain")


@pytest.mark.parametrize("minutes_before_signing", [30, -5])
def test_rejects_a_certificate_not_valid_at_signing_time(
        mini: MiniSigstore, root: bytes, minutes_before_signing: int) -> None:
    """Valid for 10 minutes from 30 minutes before the log time (expired), or from 5 after."""
    raw = mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER,
                    not_before=EPOCH - timedelta(minutes=minutes_before_signing))
    _rejected(raw, root, "cert is not valid at validation time")


def test_rejects_an_sct_from_an_unknown_ct_log(mini: MiniSigstore, root: bytes) -> None:
    raw = mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER, ctlog=CTLog("ctfe.rogue.test"))
    _rejected(raw, root, "failed to verify SCT")


def test_rejects_a_leaf_without_code_signing(mini: MiniSigstore, root: bytes) -> None:
    raw = mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER,
                    eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _rejected(raw, root, "does not contain `code signing`")


def test_a_leaf_without_eku_is_a_typed_rejection(mini: MiniSigstore, root: bytes) -> None:
    raw = mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER, eku=None)
    try:
        _verify(raw, root)
    except AdmissionError:
        return
    except Exception as exc:
        raise AssertionError(f"untyped {type(exc).__name__}: {exc}") from None
    raise AssertionError("accepted a leaf without extendedKeyUsage")


# --- the transparency log -----------------------------------------------------------------

def test_rejects_an_entry_from_an_unknown_log(mini: MiniSigstore, root: bytes) -> None:
    raw = mini.sign(MANIFEST, identity=EMAIL, issuer=ISSUER,
                    tlog=TransparencyLog("rekor.rogue.test"))
    _rejected(raw, root, "checkpoint: invalid signature")


def test_rejects_a_moved_integrated_time(bundle: bytes, root: bytes) -> None:
    """Still inside the leaf's window, but the signed entry timestamp no longer covers it."""
    entry = json.loads(bundle)["verificationMaterial"]["tlogEntries"][0]
    moved = str(int(entry["integratedTime"]) + 1)
    _rejected(_edit(bundle, {"verificationMaterial.tlogEntries.0.integratedTime": moved}),
              root, "invalid inclusion promise")


def test_rejects_a_broken_inclusion_proof(bundle: bytes, root: bytes) -> None:
    entry = json.loads(bundle)["verificationMaterial"]["tlogEntries"][0]
    hashes = entry["inclusionProof"]["hashes"]
    _rejected(_edit(bundle, {"verificationMaterial.tlogEntries.0.inclusionProof.hashes":
                             [*hashes[:-1], base64.b64encode(b"\x00" * 32).decode()]}),
              root, "invalid root hash")


def test_rejects_a_checkpoint_for_another_root(mini: MiniSigstore, bundle: bytes,
                                               root: bytes) -> None:
    """A genuinely signed checkpoint, but of a later tree than the proof's root."""
    entry = json.loads(bundle)["verificationMaterial"]["tlogEntries"][0]
    mini.tlog.append(b"an entry logged after the proof")
    later = mini.tlog.checkpoint(len(mini.tlog.leaves))
    assert later != entry["inclusionProof"]["checkpoint"]["envelope"]
    _rejected(_edit(bundle, {
        "verificationMaterial.tlogEntries.0.inclusionProof.checkpoint.envelope": later}),
        root, "invalid root hash signature")


def test_rejects_an_entry_without_a_signed_time(bundle: bytes, root: bytes) -> None:
    """No inclusion promise and no TSA timestamp: nothing vouches for the signing time."""
    doc = json.loads(bundle)
    del doc["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]
    _rejected(json.dumps(doc).encode(), root, "inclusion promise or signed timestamp")


# --- the trust root -----------------------------------------------------------------------

def test_rejects_against_the_public_sigstore_root(bundle: bytes) -> None:
    import sigstore

    public = next((Path(sigstore.__file__).parent / "_store").glob(
        "*sigstore.dev/trusted_root.json")).read_bytes()
    _rejected(bundle, public, "failed to build timestamp certificate chain")


def test_rejects_a_root_that_lists_another_rekor(mini: MiniSigstore, bundle: bytes) -> None:
    other = MiniSigstore(ca=mini.ca, ctlog=mini.ctlog, tlog=TransparencyLog("rekor.mini.test"))
    _rejected(bundle, other.trusted_root(), "checkpoint: invalid signature")


_RETIRED = {"start": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}  # before EPOCH


@pytest.mark.parametrize("retired", ["certificateAuthorities.0.validFor",
                                     "tlogs.0.publicKey.validFor",
                                     "ctlogs.0.publicKey.validFor"])
def test_an_authority_retired_before_the_signing_time_is_not_trusted(
        bundle: bytes, root: bytes, retired: str) -> None:
    try:
        accepted = _verify(bundle, _edit(root, {retired: _RETIRED}))
    except KeylessVerificationFailed:
        return
    raise AssertionError(f"accepted under a root whose {retired} ended before signing: "
                         f"{accepted}")


# --- fuzz: any one field of a valid bundle replaced -> accepted or a typed error ----------

def _paths(node: object, prefix: str = "") -> list[str]:
    found = [prefix[:-1]] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, f"{prefix}{index}.")
    return found


_BUNDLE_PATHS = _paths(json.loads(MiniSigstore(tlog=TransparencyLog("shape")).sign(
    MANIFEST, identity=EMAIL, issuer=ISSUER)))
_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=20),
                    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(_BUNDLE_PATHS), value=_values)
def test_fuzz_a_mutated_bundle_is_a_typed_error(bundle: bytes, root: bytes, path: str,
                                                value: object) -> None:
    mutated = _edit(bundle, {path: value})
    try:
        result = _verify(mutated, root)
    except AdmissionError:
        return
    # Accepted only if the edit changed nothing, or dropped the optional messageDigest: the
    # signature itself is checked over SHA-256 of the manifest, so the digest field is a copy.
    unchanged = json.loads(mutated) == json.loads(bundle)
    assert unchanged or (path, value) == ("messageSignature.messageDigest", None), (path, value)
    assert result == VerifiedSignature(DIGEST, SIGNER.key_id, "bundle", EMAIL)
