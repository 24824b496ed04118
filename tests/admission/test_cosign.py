"""Pure cosign format, keys and verification: byte-compatibility vectors and every failure."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.core import cosign
from admission.core.cosign import (
    SignatureLayer,
    SignatureMalformed,
    append_layer,
    build_bundle,
    build_signature_image,
    docker_reference,
    go_json_string,
    new_signature_layer,
    parse_containers_image_signature,
    parse_signature_manifest,
    signature_config,
    signature_tag,
    simple_signing_payload,
)
from admission.core.errors import AdmissionError
from admission.core.keys_cosign import (
    SigningKeyInvalid,
    SigningKeyPassword,
    decrypt_cosign_key,
    encrypt_cosign_key,
    key_hint,
    load_signing_key,
    load_verification_key,
)
from admission.core.verify import (
    IdentityMismatch,
    KeylessIdentity,
    KeylessVerificationFailed,
    PayloadDigestMismatch,
    PayloadTypeInvalid,
    SignatureInvalid,
    parse_bundle,
    repository_of,
    verify_bundle_keyless,
    verify_bundle_with_key,
    verify_bundle_with_keys,
    verify_legacy,
    verify_legacy_with_keys,
)
from admission.signing.sign import sign_bytes
from keys import KeyKind, generate_private_key

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "cosign"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures/cosign")


def _fixture(directory: str, name: str) -> bytes:
    """Read a fixture file; containers/image stores some as symlinks, copied here as the
    link text ("../dir-img-cosign-valid/signature-1"), so follow such a text once."""
    path = FIXTURES / directory / name
    data = path.read_bytes()
    if data.startswith(b"../") and len(data) < 200 and b"\n" not in data.strip():
        target = (path.parent / data.decode().strip()).resolve()
        if not target.exists():
            pytest.skip(f"fixture {directory}/{name} links to {target.name}, not shipped")
        data = target.read_bytes()
    return data


def _pub(name: str) -> ec.EllipticCurvePublicKey:
    key = load_verification_key((FIXTURES / name).read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


# --- byte compatibility with real cosign ------------------------------------------------------

# A real `cosign sign --key` run (cosign v1.13.1, go-containerregistry v0.11.0) against Docker
# Hub, recorded with -d in jeffhuang4704/just-notes cosign/cosign-traffic.md: the image digest,
# the .sig manifest body with its Docker-Content-Digest, and the config blob it references.
TRACE_IMAGE = "sha256:4c1c50d0ffc614f90b93b07d778028dc765548e823f676fb027f61d281ac380d"
TRACE_SIGNATURE = ("MEYCIQCPH7NJAIfrB6BZN91dV0o7l/i11muXrvrAh100jDMMhAIhAPsLH0oXb2OPITXRpWBMUd3v"
                   "Htz5Ks5pql2Hr6t/IJXw")
TRACE_LAYER = "sha256:b671489ededd1a180bd87235bba00fd83354f9c7d13b71d9f8b66a8e52965ebc"
TRACE_CONFIG = "sha256:85ad8e17d3d7c00664855c638832bd99f32d42542c2d587851410a45a7f60b95"
TRACE_MANIFEST = "sha256:7ebe8964225fa4619b53aa35416ef0246c037e36ddf81776b21b15e1dda2262b"
TRACE_CREATED = "2023-02-17T09:25:33.91047962-08:00"  # cosign 1.x recorded the signing time


def test_payload_and_sig_manifest_match_a_real_cosign_run_byte_for_byte() -> None:
    ref = docker_reference("docker.io", "chihjenhuang/cosign1")
    assert ref == "index.docker.io/chihjenhuang/cosign1"
    payload = simple_signing_payload(ref, TRACE_IMAGE)
    assert (len(payload), "sha256:" + hashlib.sha256(payload).hexdigest()) == (252, TRACE_LAYER)
    layer = SignatureLayer(payload, {cosign.SIGNATURE_ANNOTATION: TRACE_SIGNATURE})
    image = build_signature_image([layer], created=TRACE_CREATED)
    assert "sha256:" + hashlib.sha256(image.config).hexdigest() == TRACE_CONFIG
    assert len(image.config) == 247
    assert image.digest == TRACE_MANIFEST and len(image.manifest) == 558
    assert parse_signature_manifest(image.manifest)[0].digest == TRACE_LAYER
    assert signature_tag(TRACE_IMAGE) == TRACE_IMAGE.replace(":", "-") + ".sig"


@pytest.mark.parametrize("directory", ["dir-img-cosign-valid", "dir-img-cosign-key-rekor-valid"])
def test_fixture_payloads_are_exactly_what_we_write(directory: str) -> None:
    layer = parse_containers_image_signature(_fixture(directory, "signature-1"))
    doc = json.loads(layer.payload)
    ours = simple_signing_payload(doc["critical"]["identity"]["docker-reference"],
                                  doc["critical"]["image"]["docker-manifest-digest"])
    assert ours == layer.payload
    assert layer.media_type == cosign.SIMPLESIGNING_MEDIA_TYPE
    # The layer descriptor we would write carries the fixture's annotations unchanged.
    assert parse_signature_manifest(build_signature_image([layer]).manifest)[0].annotations == \
        layer.annotations


def test_go_json_escaping_and_annotations() -> None:
    assert go_json_string('a<b>&"\\\n\t\b\f\x01\u2028é') == \
        '"a\\u003cb\\u003e\\u0026\\"\\\\\\n\\t\\b\\f\\u0001\\u2028é"'
    payload = simple_signing_payload("r.example/x", TRACE_IMAGE, {"z": "1", "a": "<&>"})
    assert payload.endswith(b'"optional":{"a":"\\u003c\\u0026\\u003e","z":"1"}}')
    assert simple_signing_payload("r.example/x", TRACE_IMAGE, {}).endswith(b'"optional":{}}')
    with pytest.raises(SignatureMalformed):
        simple_signing_payload("r.example/x", "sha256:short")


def test_config_has_one_history_entry_per_layer_and_go_zero_time() -> None:
    config = json.loads(signature_config(["sha256:" + "a" * 64, "sha256:" + "b" * 64]))
    assert config["created"] == "0001-01-01T00:00:00Z"
    assert config["history"] == [{"created": "0001-01-01T00:00:00Z"}] * 2


# --- the fixtures through verification --------------------------------------------------------

FIXTURE_DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"


@pytest.mark.parametrize(("directory", "names", "pub"), [
    ("dir-img-cosign-valid", ["signature-1"], "cosign.pub"),
    ("dir-img-cosign-valid-2", ["signature-1", "signature-2"], "cosign.pub"),
    ("dir-img-cosign-key-rekor-valid", ["signature-1"], "cosign2.pub"),
])
def test_valid_fixtures_verify_with_their_key_and_not_the_other(directory: str,
                                                                names: list[str],
                                                                pub: str) -> None:
    manifest = _fixture(directory, "manifest.json")
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    other = "cosign2.pub" if pub == "cosign.pub" else "cosign.pub"
    for name in names:
        layer = parse_containers_image_signature(_fixture(directory, name))
        payload = verify_legacy(layer, _pub(pub), image_digest=digest,
                                repository=json.loads(layer.payload)["critical"]["identity"]
                                ["docker-reference"])
        assert payload.manifest_digest == digest
        with pytest.raises(SignatureInvalid):
            verify_legacy(layer, _pub(other), image_digest=digest, repository=None)


def test_modified_manifest_fixture_fails_on_the_digest() -> None:
    manifest = _fixture("dir-img-cosign-modified-manifest", "manifest.json")
    layer = parse_containers_image_signature(
        _fixture("dir-img-cosign-modified-manifest", "signature-1"))
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert digest != FIXTURE_DIGEST
    with pytest.raises(PayloadDigestMismatch, match="634a8f35"):
        verify_legacy(layer, _pub("cosign.pub"), image_digest=digest, repository=None)


def test_manifest_digest_error_fixture_fails() -> None:
    # Its manifest.json is a link to a schema-1 manifest containers/image keeps elsewhere
    # (v2s1-invalid-signatures.manifest.json, not among our fixtures); whatever its bytes, the
    # valid signature is for 634a8f35... and must not verify for another digest.
    layer = parse_containers_image_signature(
        _fixture("dir-img-cosign-manifest-digest-error", "signature-1"))
    link = (FIXTURES / "dir-img-cosign-manifest-digest-error" / "manifest.json").read_bytes()
    digest = "sha256:" + hashlib.sha256(link).hexdigest()
    with pytest.raises(PayloadDigestMismatch):
        verify_legacy(layer, _pub("cosign.pub"), image_digest=digest, repository=None)
    ok, errors = verify_legacy_with_keys(layer, {"k": _pub("cosign.pub")}, image_digest=digest,
                                         repository=None)
    assert not ok and isinstance(errors[0], PayloadDigestMismatch)


def test_identity_type_and_tampering_are_named() -> None:
    key = generate_private_key()
    ref = docker_reference("127.0.0.1:5000", "team-a/app")
    payload = simple_signing_payload(ref, FIXTURE_DIGEST)
    layer = new_signature_layer(payload, sign_bytes(key, payload))
    pub = key.public_key()
    assert verify_legacy(layer, pub, image_digest=FIXTURE_DIGEST,
                         repository="127.0.0.1:5000/team-a/app:v1").docker_reference == ref
    with pytest.raises(IdentityMismatch, match="team-b"):
        verify_legacy(layer, pub, image_digest=FIXTURE_DIGEST,
                      repository="127.0.0.1:5000/team-b/app")
    attestation = payload.replace(b"cosign container image signature", b"https://slsa.dev/x")
    with pytest.raises(PayloadTypeInvalid):
        verify_legacy(new_signature_layer(attestation, sign_bytes(key, attestation)), pub,
                      image_digest=FIXTURE_DIGEST, repository=None)
    tampered = SignatureLayer(payload.replace(b"team-a", b"team-b"), layer.annotations)
    with pytest.raises(SignatureInvalid):
        verify_legacy(tampered, pub, image_digest=FIXTURE_DIGEST, repository=None)
    bad_b64 = SignatureLayer(payload, {cosign.SIGNATURE_ANNOTATION: "!!"})
    ok, errors = verify_legacy_with_keys(bad_b64, {"k": pub}, image_digest=FIXTURE_DIGEST,
                                         repository=None)
    assert not ok and isinstance(errors[0], SignatureMalformed)


@pytest.mark.parametrize("kind", list(KeyKind))
def test_every_key_kind_signs_and_verifies_legacy_and_bundle(kind: KeyKind) -> None:
    key = generate_private_key(kind)
    payload = simple_signing_payload("r.example/app", FIXTURE_DIGEST)
    layer = new_signature_layer(payload, sign_bytes(key, payload))
    stranger = generate_private_key(kind).public_key()
    ok, errors = verify_legacy_with_keys(layer, {"mine": key.public_key(), "other": stranger},
                                         image_digest=FIXTURE_DIGEST, repository=None)
    assert [r.key_id for r in ok] == ["mine"] and not errors
    manifest = b'{"schemaVersion":2}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    data = manifest if kind is KeyKind.ED25519 else hashlib.sha256(manifest).digest()
    signature = sign_bytes(key, data, prehashed=kind is not KeyKind.ED25519)
    bundle = parse_bundle(build_bundle(digest, signature, key_hint(key)))
    verify_bundle_with_key(bundle, key.public_key(), image_digest=digest, manifest=manifest)
    with pytest.raises(SignatureInvalid):
        verify_bundle_with_key(bundle, stranger, image_digest=digest, manifest=manifest)
    with pytest.raises(PayloadDigestMismatch):
        verify_bundle_with_key(bundle, key.public_key(), image_digest=FIXTURE_DIGEST)
    ok, errors = verify_bundle_with_keys(bundle, {"other": stranger}, image_digest=digest,
                                         manifest=manifest)
    assert not ok and isinstance(errors[0], SignatureInvalid)


def test_append_never_duplicates() -> None:
    payload = simple_signing_payload("r.example/app", FIXTURE_DIGEST)
    a = new_signature_layer(payload, b"sig-a")
    b = new_signature_layer(payload, b"sig-b")
    layers, added = append_layer([a], a)
    assert layers == [a] and not added
    layers, added = append_layer(layers, b)
    assert layers == [a, b] and added
    assert [x.digest for x in parse_signature_manifest(build_signature_image(layers).manifest)] \
        == [a.digest, b.digest]


def test_repository_of_normalises_docker_hub_and_ignores_tag_and_digest() -> None:
    assert repository_of("index.docker.io/library/nginx:1.25") == "docker.io/library/nginx"
    assert repository_of("docker.io/nginx@" + FIXTURE_DIGEST) == "docker.io/library/nginx"
    assert repository_of("127.0.0.1:5000/a/b:v1") == "127.0.0.1:5000/a/b"


# --- keys -------------------------------------------------------------------------------------

# Written by `cosign generate-key-pair` with an empty password: conforma/cli's VSA signing
# test (internal/validate/vsa), a public test vector.
REAL_COSIGN_KEY = b"""-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjo2NTUzNiwiciI6
OCwicCI6MX0sInNhbHQiOiJLYU9OQzduQVJLOVgxM1FoaWFucjAwTTBGYys2Sitr
dnAxN1FuanpiVk9nPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJVOHZqWWtqMlZOUFZGdlZFZWZ3bXZ5VGloUERrelBoaCJ9LCJj
aXBoZXJ0ZXh0IjoidWNWMnQ4TTZVNFJvb29FOXc0d3dkc3E1RDYrS2RKY245dERT
KzFwRDRGN040SVJOWEgzSTBua3h1a3NackFOUHR1emIvTkVYQ201dUp3Zjh3Qzl1
VlprbXdwNU5jRUZ6b3ZNS3JCZmNvdXdjaEkrMzkrQ0NhbVZPbzBucmRnZjhvcmpK
dXdrWDBYL1phY0RUTERGaUxyc1laMWVMMmlqMGU1MVRpZmVQNTl4WXNPK1FnM1Jv
OURRVjNQMk9ndDFDaVFHeGg1VXhUZytGc3c9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
"""


def test_real_cosign_encrypted_key_decrypts_and_signs() -> None:
    key = load_signing_key(REAL_COSIGN_KEY, b"")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    payload = simple_signing_payload("r.example/app", FIXTURE_DIGEST)
    layer = new_signature_layer(payload, sign_bytes(key, payload))
    verify_legacy(layer, key.public_key(), image_digest=FIXTURE_DIGEST, repository=None)
    with pytest.raises(SigningKeyPassword):
        load_signing_key(REAL_COSIGN_KEY, b"wrong")
    with pytest.raises(SigningKeyPassword):
        load_signing_key(REAL_COSIGN_KEY, None)


@pytest.mark.parametrize("kind", [KeyKind.EC_P256, KeyKind.ED25519])
def test_encrypted_key_round_trip_both_armours(kind: KeyKind) -> None:
    key = generate_private_key(kind)
    for armour in ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY"):
        pem = encrypt_cosign_key(key, b"s3cret", scrypt=(1024, 8, 1), pem_type=armour)
        assert pem.startswith(f"-----BEGIN {armour}-----\n".encode())
        back = decrypt_cosign_key(pem, b"s3cret")
        assert key_hint(back) == key_hint(key)


def test_hostile_cosign_key_files_are_refused_typed() -> None:
    def wrap(doc: dict[str, object]) -> bytes:
        body = base64.b64encode(json.dumps(doc).encode()).decode()
        return f"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n{body}\n" \
               "-----END ENCRYPTED COSIGN PRIVATE KEY-----\n".encode()

    good = json.loads(base64.b64decode(b"".join(REAL_COSIGN_KEY.splitlines()[1:-1])))
    huge = {**good, "kdf": {**good["kdf"], "params": {"N": 1 << 30, "r": 8, "p": 1}}}
    with pytest.raises(SigningKeyInvalid, match="out of bounds"):
        load_signing_key(wrap(huge), b"")
    with pytest.raises(SigningKeyInvalid, match="secretbox"):
        load_signing_key(wrap({**good, "cipher": {"name": "aes"}}), b"")
    with pytest.raises(SigningKeyInvalid):
        load_signing_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", None)
    with pytest.raises(SigningKeyInvalid):
        load_verification_key(b"not a key")


# --- keyless: negative paths (a positive vector needs a Fulcio/Rekor signing run) -------------

def test_keyless_refuses_a_key_bundle_and_a_foreign_root() -> None:
    import sigstore

    root = next((Path(sigstore.__file__).parent / "_store").glob("*sigstore.dev/trusted_root.json"))
    manifest = b'{"schemaVersion":2}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    key = generate_private_key()
    raw = build_bundle(digest, sign_bytes(key, hashlib.sha256(manifest).digest(), prehashed=True),
                       key_hint(key))
    with pytest.raises(KeylessVerificationFailed):
        verify_bundle_keyless(raw, manifest, image_digest=digest, trusted_root=root.read_bytes(),
                              identities=[KeylessIdentity("ci@example.org",
                                                          "https://issuer.example")])
    with pytest.raises(KeylessVerificationFailed):
        verify_bundle_keyless(raw, manifest, image_digest=digest, trusted_root=b"{}",
                              identities=[])
    with pytest.raises(PayloadDigestMismatch):
        verify_bundle_keyless(raw, b"other", image_digest=digest, trusted_root=b"{}",
                              identities=[])


# --- fuzz: parsers raise only typed errors ----------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=4) |
                     st.dictionaries(st.text(max_size=12), kids, max_size=4), max_leaves=20)
_layer_keys = st.sampled_from(["mediaType", "digest", "size", "annotations"])
_parser_input = st.one_of(
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(_layer_keys, _json, max_size=4).map(
        lambda d: json.dumps({"layers": [d]}).encode()),
)


@settings(max_examples=200, deadline=None)
@given(_parser_input)
def test_fuzz_parsers_raise_only_typed_errors(data: bytes) -> None:
    for parse in (parse_signature_manifest, cosign.parse_simple_signing, parse_bundle,
                  parse_containers_image_signature, cosign.bundle_layer_digest):
        with contextlib.suppress(AdmissionError):
            parse(data)
    with contextlib.suppress(AdmissionError):
        load_signing_key(data, b"")


@pytest.mark.parametrize(("layer", "message"), [
    ({"size": cosign.MAX_PAYLOAD_BYTES + 1}, r"layer 1 size \d+ is not in 0\.\."),
    ({"size": True}, r"layer 1 size True is not in 0\.\."),
    ({"size": -1}, r"layer 1 size -1 is not in 0\.\."),
    ({"digest": "sha256:" + "z" * 64}, "layer 1 lacks a mediaType or a sha256 digest"),
    ({"annotations": {"k": "v" * (cosign.MAX_ANNOTATION_BYTES + 1)}},
     "layer 1 annotations are not short strings"),
    # Checked whatever the media type: a bad layer of another type fails the manifest too.
    ({"mediaType": "application/octet-stream", "size": -1}, r"layer 1 size -1 is not in"),
])
def test_signature_manifest_layer_bounds(layer: dict[str, object], message: str) -> None:
    good = {"mediaType": cosign.SIMPLESIGNING_MEDIA_TYPE, "digest": "sha256:" + "a" * 64,
            "size": 10, "annotations": {}}
    manifest = json.dumps({"layers": [good, {**good, **layer}]}).encode()
    with pytest.raises(SignatureMalformed, match=message):
        parse_signature_manifest(manifest)
    # A well-formed layer of another media type is skipped, not returned.
    other = {**good, "mediaType": "application/octet-stream", "digest": "sha256:" + "b" * 64}
    refs = parse_signature_manifest(json.dumps({"layers": [other, good]}).encode())
    assert [r.digest for r in refs] == [good["digest"]]
