"""In-toto attestations in cosign's format, pure: the statement cosign writes (byte for byte, from
a real cosign run), DSSE PAE and envelopes, verification with every named failure, the facts a
policy reads, ImagePolicy ``spec.attestations`` parsing, and property tests of the parsers."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.core.attestation_policy import requirement_facts
from admission.core.attestations import (
    CUSTOM,
    DSSE_MEDIA_TYPE,
    INTOTO_PAYLOAD_TYPE,
    MAX_ATTESTATION_LAYERS,
    SLSA_V1,
    SPDX,
    STATEMENT_V01,
    AttestationMalformed,
    AttestationSignatureInvalid,
    AttestationSubjectMismatch,
    ImageAttestationError,
    PredicateTypeInvalid,
    attestation_layer,
    attestation_layer_refs,
    attestation_tag,
    build_attestation_image,
    build_statement,
    envelope_json,
    go_value_json,
    pae,
    parse_envelope,
    parse_statement,
    predicate_type_uri,
    sign_envelope,
    statement_facts,
    verify_envelope,
)
from admission.core.cosign import SIGNATURE_ANNOTATION
from admission.core.policy import PolicyInvalid, load_policies
from admission.signing.sign import sign_bytes
from keys import KeyKind, PrivateKey, generate_private_key, key_thumbprint, public_key_pem

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
KEY = generate_private_key()
OTHER = generate_private_key()

# A real `cosign attest --type custom` run (sigstore/cosign pkg/cosign/testdata/
# oci-attestation.sigstore.json, Apache-2.0): its DSSE envelope, and the public key of the
# Fulcio certificate that signed it (the certificate's DER, base64).
COSIGN_DIGEST = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
COSIGN_PAYLOAD = (
    "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjAuMSIsInByZWRpY2F0ZVR5cGUiOiJodHRwczov"
    "L2Nvc2lnbi5zaWdzdG9yZS5kZXYvYXR0ZXN0YXRpb24vdjEiLCJzdWJqZWN0IjpbeyJuYW1lIjoiMTI3LjAuMC4xOjYw"
    "OTQzL3JlcG8iLCJkaWdlc3QiOnsic2hhMjU2IjoiNzMyMTEyMjcwZDdlNTk0MThhOGMwODBiMTM0YjI0Y2FiZDY3ZDI1"
    "MGQwZDAxNDdhOTdlZDk1YmE1YzI4MGFhNCJ9fV0sInByZWRpY2F0ZSI6eyJEYXRhIjoie1wiZm9vXCI6IFwiYmFyXCJ9"
    "XG4iLCJUaW1lc3RhbXAiOiIyMDI1LTAyLTI4VDE5OjE4OjExWiJ9fQ==")
COSIGN_SIG = ("MEQCIDomiuYVgNKyfYz/leqvtEY2xuifteigjq+LfShu92BBAiBxixsGZNYBVRhGjX6OZiPQBIoUf+i8VgPh"
              "//AT/z4Vgg==")
COSIGN_CERT = (
    "MIICzzCCAlWgAwIBAgIUF2e+Ci0YsLnPaFUknbNDtUcqXl0wCgYIKoZIzj0EAwMwNzEVMBMGA1UEChMMc2lnc3RvcmUu"
    "ZGV2MR4wHAYDVQQDExVzaWdzdG9yZS1pbnRlcm1lZGlhdGUwHhcNMjUwMjI4MTkxODExWhcNMjUwMjI4MTkyODExWjAA"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEk/CiYRmA9zsa7ams/+fI+wGeXOFxng4J0wSj1jub7kxArHhGwvgcVE3u"
    "brGXNQB9X3ksG0F+MiXHG8gRzxrr0KOCAXQwggFwMA4GA1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDAzAd"
    "BgNVHQ4EFgQUcPdotYluBHI4fkYy3yij5SY4728wHwYDVR0jBBgwFoAU39Ppz1YkEZb5qNjpKFWixi4YZD8wHgYDVR0R"
    "AQH/BBQwEoEQY29keUBzb3lsYW5kLmNvbTAsBgorBgEEAYO/MAEBBB5odHRwczovL2dpdGh1Yi5jb20vbG9naW4vb2F1"
    "dGgwLgYKKwYBBAGDvzABCAQgDB5odHRwczovL2dpdGh1Yi5jb20vbG9naW4vb2F1dGgwgYoGCisGAQQB1nkCBAIEfAR6"
    "AHgAdgDdPTBqxscRMmMZHhyZZzcCokpeuN48rf+HinKALynujgAAAZVN/q3JAAAEAwBHMEUCIQCdLrw1b9rE6rFd+NAJ"
    "VPaw4DmH0YNOH2AYIOc4g26WmgIgG7Gub5hz7gzFpvhdb9HQsObWfTNcUiSOmrnPlmaQaKUwCgYIKoZIzj0EAwMDaAAw"
    "ZQIxAMwB66cCKVhOYq2JMx20FPfJXD6K6oaUV8aIlCiW/YLLZdkWjTWkXt4qIbPgUeAl6wIwdCmnnSMw9fG7FuKz14RY"
    "FSbE1VLhNiWhGYpfCj00FtNRoXF+NFQ7DOKjjq7xPjza")


def cosign_envelope(payload: str = COSIGN_PAYLOAD, sig: str = COSIGN_SIG) -> bytes:
    return json.dumps({"payload": payload, "payloadType": INTOTO_PAYLOAD_TYPE,
                       "signatures": [{"sig": sig}]}).encode()


def cosign_key() -> Any:
    return x509.load_der_x509_certificate(base64.b64decode(COSIGN_CERT)).public_key()


def envelope(statement: bytes, key: PrivateKey = KEY,
             payload_type: str = INTOTO_PAYLOAD_TYPE) -> bytes:
    return sign_envelope(statement, lambda m: sign_bytes(key, m), payload_type)


def provenance(builder: str = "https://ci.example/builder",
               repo: str = "https://git.example/acme/app") -> bytes:
    return json.dumps({
        "buildDefinition": {"buildType": "https://umec.io/buildtypes/oci-image/v1",
                            "externalParameters": {"source": {"repository": repo}},
                            "resolvedDependencies": [{"uri": f"git+{repo}@refs/heads/main",
                                                      "digest": {"gitCommit": "ab" * 20}}]},
        "runDetails": {"builder": {"id": builder}}}).encode()


def statement(kind: str = "slsaprovenance1", body: bytes | None = None,
              digest: str = D1) -> bytes:
    return build_statement(kind, provenance() if body is None else body,
                           repository="reg.example/acme/app", digest=digest,
                           timestamp="2025-01-01T00:00:00Z")


# --- cosign's bytes ------------------------------------------------------------------------

def test_statement_is_cosigns_bytes_and_its_envelope_verifies() -> None:
    """A real cosign attestation: our statement builder writes its payload byte for byte (with
    cosign's _type v0.1), and our verifier accepts its DSSE signature."""
    ours = build_statement("custom", b'{"foo": "bar"}\n', repository="127.0.0.1:60943/repo",
                           digest=COSIGN_DIGEST, timestamp="2025-02-28T19:18:11Z",
                           statement_type=STATEMENT_V01)
    assert ours == base64.b64decode(COSIGN_PAYLOAD)
    verdict = verify_envelope(cosign_envelope(), {"leaf": cosign_key()},
                              image_digest=COSIGN_DIGEST)
    assert verdict.error is None and verdict.signers == ("leaf",)
    assert verdict.statement is not None and verdict.statement.predicate_type == CUSTOM
    # The same envelope against another digest (a replay) and another key.
    assert isinstance(verify_envelope(cosign_envelope(), {"leaf": cosign_key()},
                                      image_digest=D1).error, AttestationSubjectMismatch)
    assert isinstance(verify_envelope(cosign_envelope(), {"k": KEY.public_key()},
                                      image_digest=COSIGN_DIGEST).error,
                      AttestationSignatureInvalid)


def test_pae_is_the_dsse_spec_vector() -> None:
    # secure-systems-lab/dsse protocol.md: PAE("http://example.com/HelloWorld", "hello world").
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_envelope_is_sigstores_field_order() -> None:
    raw = envelope_json(INTOTO_PAYLOAD_TYPE, b"{}", [b"\x01\x02"])
    assert raw == (b'{"payloadType":"application/vnd.in-toto+json","payload":"e30=",'
                   b'"signatures":[{"keyid":"","sig":"AQI="}]}')


def test_statement_layout_per_type() -> None:
    doc = json.loads(statement())
    assert list(doc) == ["_type", "predicateType", "subject", "predicate"]
    assert doc["_type"] == "https://in-toto.io/Statement/v1" and doc["predicateType"] == SLSA_V1
    assert doc["subject"] == [{"name": "reg.example/acme/app", "digest": {"sha256": "1" * 64}}]
    assert json.loads(statement("custom", b"free text"))["predicate"] == {
        "Data": "free text", "Timestamp": "2025-01-01T00:00:00Z"}
    assert json.loads(statement("spdx", b"SPDXVersion: SPDX-2.3"))["predicate"] == \
        "SPDXVersion: SPDX-2.3"
    assert json.loads(statement("spdxjson", b'{"b":1,"a":[1.5,2.0]}'))["predicate"] == \
        {"a": [1.5, 2], "b": 1}
    with pytest.raises(AttestationMalformed, match="runDetails"):
        statement("slsaprovenance1", b'{"buildDefinition": {}}')
    with pytest.raises(AttestationMalformed, match="not JSON"):
        statement("cyclonedx", b"<bom/>")
    with pytest.raises(AttestationMalformed, match="JSON object"):
        statement("https://example.com/my-type", b"[1]")


def test_predicate_type_names_and_uris() -> None:
    assert predicate_type_uri("slsaprovenance1") == SLSA_V1
    assert predicate_type_uri("spdxjson") == predicate_type_uri("spdx") == SPDX
    assert predicate_type_uri("https://example.com/x/v1") == "https://example.com/x/v1"
    for bad in ("nonsense", "", "has space://x", "://x"):
        with pytest.raises(PredicateTypeInvalid):
            predicate_type_uri(bad)


@pytest.mark.parametrize(("value", "go"), [
    (1.5, "1.5"), (2.0, "2"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (1.5e-7, "1.5e-7"), (0.000001, "0.000001"), (-0.0, "-0"), (12345678901234567890, None)])
def test_floats_as_go_marshals_them(value: float, go: str | None) -> None:
    assert go_value_json(value) == (go or str(value))
    assert go_value_json({"b": "<&>", "a": None}) == '{"a":null,"b":"\\u003c\\u0026\\u003e"}'


# --- verification --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [KeyKind.EC_P256, KeyKind.RSA_2048, KeyKind.ED25519])
def test_round_trip_every_key_kind(kind: KeyKind) -> None:
    key = generate_private_key(kind)
    verdict = verify_envelope(envelope(statement(), key),
                              {"other": OTHER.public_key(), "mine": key.public_key()},
                              image_digest=D1)
    assert verdict.error is None and verdict.signers == ("mine",)
    assert statement_facts(verdict.statement) == {  # type: ignore[arg-type]
        "predicate_type": SLSA_V1, "builder_id": "https://ci.example/builder",
        "build_type": "https://umec.io/buildtypes/oci-image/v1",
        "source_repository": "https://git.example/acme/app",
        "source_repositories": ["https://git.example/acme/app"], "commits": ["ab" * 20],
        "sbom": None}


def test_attacks_each_named() -> None:
    keys = {"ci": KEY.public_key()}
    good = envelope(statement())
    # Signed by another key.
    assert isinstance(verify_envelope(envelope(statement(), OTHER), keys, image_digest=D1).error,
                      AttestationSignatureInvalid)
    # Tampered payload (another builder) under the original signature.
    doc = json.loads(good)
    doc["payload"] = base64.b64encode(statement(body=provenance("https://evil"))).decode()
    tampered = verify_envelope(json.dumps(doc).encode(), keys, image_digest=D1)
    assert isinstance(tampered.error, AttestationSignatureInvalid) and tampered.signers == ()
    # Tampered payloadType (PAE binds it).
    doc = json.loads(good)
    doc["payloadType"] = "application/json"
    assert isinstance(verify_envelope(json.dumps(doc).encode(), keys, image_digest=D1).error,
                      AttestationSignatureInvalid)
    # Signed, but not an in-toto payload.
    wrong_type = verify_envelope(envelope(statement(), payload_type="text/plain"), keys,
                                 image_digest=D1)
    assert isinstance(wrong_type.error, AttestationMalformed) and wrong_type.signers == ("ci",)
    # For another digest, or replayed from another image.
    for raw in (envelope(statement(digest=D2)), good):
        verdict = verify_envelope(raw, keys, image_digest=D2 if raw is good else D1)
        assert isinstance(verdict.error, AttestationSubjectMismatch)
        assert verdict.signers == ("ci",) and verdict.statement is None
    # No keys at all.
    assert isinstance(verify_envelope(good, {}, image_digest=D1).error,
                      AttestationSignatureInvalid)


def test_url_safe_base64_accepted_mixed_alphabets_refused() -> None:
    good = json.loads(envelope(statement()))
    url = dict(good, payload=base64.urlsafe_b64encode(statement()).decode())
    assert verify_envelope(json.dumps(url).encode(), {"ci": KEY.public_key()},
                           image_digest=D1).error is None
    with pytest.raises(AttestationMalformed, match="base64"):
        parse_envelope(json.dumps(dict(good, payload="ab+-")).encode())


def test_the_att_image_is_cosigns_layout() -> None:
    raw = envelope(statement())
    image = build_attestation_image([attestation_layer(raw, SLSA_V1)])
    manifest = json.loads(image.manifest)
    layer = manifest["layers"][0]
    assert layer["mediaType"] == DSSE_MEDIA_TYPE == "application/vnd.dsse.envelope.v1+json"
    assert layer["annotations"] == {SIGNATURE_ANNOTATION: "", "predicateType": SLSA_V1}
    assert list(layer["annotations"]) == [SIGNATURE_ANNOTATION, "predicateType"]  # Go map
    assert attestation_tag(D1) == "sha256-" + "1" * 64 + ".att"
    refs = attestation_layer_refs(manifest)
    assert [(r.digest, r.size, r.predicate_type) for r in refs] == [
        (layer["digest"], len(raw), SLSA_V1)]
    with pytest.raises(AttestationMalformed, match="limit"):
        attestation_layer_refs({"layers": [layer] * (MAX_ATTESTATION_LAYERS + 1)})
    with pytest.raises(AttestationMalformed, match="size"):
        attestation_layer_refs({"layers": [dict(layer, size=0)]})


def test_facts_of_slsa_v02_and_sboms() -> None:
    v02 = parse_statement(statement("slsaprovenance", json.dumps({
        "builder": {"id": "https://b"}, "buildType": "t",
        "invocation": {"configSource": {"uri": "git+https://git.example/o/r.git@refs/tags/v1",
                                        "digest": {"sha1": "c0ffee"}}}}).encode()))
    assert statement_facts(v02)["source_repositories"] == ["https://git.example/o/r"]
    assert statement_facts(v02)["source_repository"] == "https://git.example/o/r"
    assert statement_facts(v02)["builder_id"] == "https://b"
    spdx = parse_statement(statement("spdxjson", b'{"spdxVersion":"SPDX-2.3","packages":[{},{}]}'))
    assert statement_facts(spdx)["sbom"] == {"format": "spdx", "version": "SPDX-2.3",
                                             "packages": 2}
    cdx = parse_statement(statement("cyclonedx", b'{"specVersion":"1.5","components":[{}]}'))
    assert statement_facts(cdx)["sbom"] == {"format": "cyclonedx", "version": "1.5",
                                            "packages": 1}


# --- ImagePolicy spec.attestations -----------------------------------------------------------

def policy(attestations: Any) -> dict[str, Any]:
    pem = public_key_pem(KEY).decode()
    return {"apiVersion": "umec.io/v1alpha1", "kind": "ClusterImagePolicy",
            "metadata": {"name": "p"},
            "spec": {"images": ["reg.example/**"],
                     "authorities": [{"name": "ci", "keys": [{"name": "ci", "pem": pem}]}],
                     "attestations": attestations}}


def requirement(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "provenance", "predicateType": "slsaprovenance1",
                            "keys": [{"name": "ci", "pem": public_key_pem(KEY).decode()}]}
    return base | kw


def test_policy_attestations_parse_and_change_the_generation() -> None:
    plain = load_policies([policy(None)])
    required = load_policies([policy([requirement(conditions={
        "builderId": "https://ci.example/builder"}), requirement(name="sbom",
                                                                 predicateType="sbom")])])
    assert plain.generation != required.generation
    reqs = required.policies[0].attestations
    assert reqs[0].conditions == {"builder_id": "https://ci.example/builder"}
    assert reqs[1].predicate_types == ("https://cyclonedx.org/bom", SPDX)
    assert set(required.attestation_keys_for("ns", "reg.example/a/b")) == \
        {key_thumbprint(KEY)}
    assert required.attestation_keys_for("ns", "other.example/a") == {}


@pytest.mark.parametrize(("bad", "message"), [
    (requirement(extra=1), "unknown key"),
    (requirement(predicateType="nonsense"), "neither a known predicate type"),
    (requirement(keys=[]), "non-empty list of keys"),
    (requirement(conditions={"builderID": "x"}), "unknown condition"),
    (requirement(predicateType="sbom", conditions={"builderId": "x"}), "SLSA provenance only"),
    (requirement(conditions={"builderId": ""}), "non-empty string"),
    ("not a mapping", "must be a mapping"),
])
def test_policy_attestation_mistakes_are_refused(bad: Any, message: str) -> None:
    with pytest.raises(PolicyInvalid, match=message):
        load_policies([policy([bad])])
    with pytest.raises(PolicyInvalid, match="duplicate attestation names"):
        load_policies([policy([requirement(), requirement()])])


def test_requirement_facts_say_why_envelopes_do_not_count() -> None:
    req = load_policies([policy([requirement()])]).policies[0].attestations[0]
    trusted = {key_thumbprint(KEY): KEY.public_key(), "other": OTHER.public_key()}
    verdicts = [verify_envelope(raw, trusted, image_digest=D1) for raw in (
        envelope(statement(), OTHER),                 # another requirement's key
        b"{not json",                                 # malformed
        envelope(statement(digest=D2)),               # about another digest
        envelope(statement("spdxjson", b"{}")),       # right key, another type
    )]
    facts = requirement_facts(req, verdicts)
    assert [(f["check"], f["predicate_type"]) for f in facts["failures"]] == [
        ("attestation.subject", SLSA_V1), ("attestation.malformed", ""),
        ("attestation.signature", SLSA_V1)]
    assert [a["predicate_type"] for a in facts["attestations"]] == [SPDX]
    assert facts["attestations"][0]["signers"] == ["ci"]
    assert facts["predicate_types"] == [SLSA_V1] and facts["keys"] == ["ci"]


# --- properties ----------------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _json.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"payloadType": _json, "payload": _json,
                                        "signatures": _json}).map(
                     lambda v: json.dumps(v).encode())))
def test_hostile_envelopes_never_escape_as_anything_but_a_verdict(raw: bytes) -> None:
    verdict = verify_envelope(raw, {"ci": KEY.public_key()}, image_digest=D1)
    assert verdict.statement is None and isinstance(verdict.error, ImageAttestationError)


@settings(max_examples=300, deadline=None)
@given(_json.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
def test_statement_parser_raises_only_malformed(payload: bytes) -> None:
    try:
        parsed = parse_statement(payload)
    except AttestationMalformed:
        return
    assert parsed.predicate_type and parsed.subjects


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.text(max_size=30), st.integers(0, 10_000))
def test_signed_envelopes_round_trip_and_any_flipped_byte_fails(body: bytes, kind: str,
                                                                flip: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = sign_envelope(body, lambda m: key.sign(m, ec.ECDSA(hashes.SHA256())), kind)
    parsed = parse_envelope(raw)
    assert (parsed.payload_type, parsed.payload) == (kind, body)
    doc = json.loads(raw)
    changed = bytearray(body + b"\x00") if not body else bytearray(body)
    changed[flip % len(changed)] ^= 0x01
    doc["payload"] = base64.b64encode(bytes(changed)).decode()
    from admission.core.attestations import envelope_signers
    assert envelope_signers(parse_envelope(json.dumps(doc).encode()),
                            {"k": key.public_key()}) == ()
    assert envelope_signers(parsed, {"k": key.public_key()}) == ("k",)


def test_rsa_pss_is_not_accepted_as_pkcs1() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raw = sign_envelope(statement(), lambda m: key.sign(
        m, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()))
    assert isinstance(verify_envelope(raw, {"r": key.public_key()}, image_digest=D1).error,
                      AttestationSignatureInvalid)


def test_the_crds_accept_what_the_parser_accepts() -> None:
    """spec.attestations is in both CRD schemas (kubectl would otherwise prune it) and a
    misspelt condition is refused by the schema as by the parser."""
    from pathlib import Path

    import jsonschema
    import yaml
    crds = list(yaml.safe_load_all((Path(__file__).resolve().parents[2] / "deploy" /
                                    "crd-imagepolicy.yaml").read_text()))
    doc = policy([requirement(conditions={"builderId": "https://b", "sourceRepository": "s",
                                          "buildType": "t"}),
                  requirement(name="sbom", predicateType="sbom")])
    load_policies([doc])
    for crd in crds:
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.validate({"spec": doc["spec"]}, schema)
        typo = json.loads(json.dumps(doc["spec"]))
        typo["attestations"][0]["conditions"] = {"builderID": "x"}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"spec": typo}, schema)


def test_bounds_before_any_work() -> None:
    """Oversized envelopes, too many signatures, and .att manifests declaring more bytes than
    the cap are refused before anything is verified or fetched."""
    import asyncio
    from dataclasses import dataclass

    from admission.core.attestations import MAX_ENVELOPE_BYTES, MAX_SIGNATURES
    from admission.core.reference import parse_reference
    from admission.signing.attest import MAX_ATTESTATION_BYTES, verify_image_attestations

    with pytest.raises(AttestationMalformed, match="exceeds"):
        parse_envelope(b" " * (MAX_ENVELOPE_BYTES + 1))
    doc = json.loads(envelope(statement()))
    doc["signatures"] = doc["signatures"] * (MAX_SIGNATURES + 1)
    many = verify_envelope(json.dumps(doc).encode(), {"ci": KEY.public_key()}, image_digest=D1)
    assert isinstance(many.error, AttestationMalformed) and "signatures" in many.error.detail

    @dataclass
    class Declared:
        json: dict[str, Any]

    class Registry:
        fetched = 0

        async def get_manifest(self, ref: Any) -> Declared:
            layer = {"mediaType": DSSE_MEDIA_TYPE, "digest": D2, "size": MAX_ENVELOPE_BYTES}
            count = MAX_ATTESTATION_BYTES // MAX_ENVELOPE_BYTES + 1
            return Declared({"layers": [layer] * count})

        async def get_blob(self, *args: Any, **kw: Any) -> bytes:
            self.fetched += 1
            raise AssertionError("nothing may be fetched")

    registry = Registry()
    [verdict] = asyncio.run(verify_image_attestations(
        registry, parse_reference(f"reg.example/app@{D1}"),  # type: ignore[arg-type]
        {"ci": KEY.public_key()}))
    assert isinstance(verdict.error, AttestationMalformed) and "limit" in verdict.error.detail
    assert registry.fetched == 0


# --- bounds before json.loads (review F2) ----------------------------------------------------

def test_padding_is_refused_before_json_builds_it() -> None:
    """The reviewer's envelope (``[],[],…`` inside the cap) is refused by the pre-scan; a
    payload so padded is never parsed unsigned; signed, the statement parser's bounds refuse
    it; nesting past the depth limit likewise."""
    from admission.core.attestations import (
        MAX_ENVELOPE_BYTES,
        MAX_JSON_DEPTH,
        MAX_JSON_VALUES,
        bounded_loads,
    )
    head = b'{"payloadType":"x","signatures":[{"sig":"AA=="}],"payload":"","pad":['
    padded = head + b"[]," * ((MAX_ENVELOPE_BYTES - len(head) - 4) // 3) + b"[]]}"
    with pytest.raises(AttestationMalformed, match="outside its strings"):
        parse_envelope(padded)
    body = b'{"_type":"https://in-toto.io/Statement/v1","pad":[' + b"[]," * MAX_JSON_VALUES + b"1]}"
    unsigned = envelope_json(INTOTO_PAYLOAD_TYPE, body, [b"\x00" * 64])
    verdict = verify_envelope(unsigned, {"ci": KEY.public_key()}, image_digest=D1,
                              claimed_type=SLSA_V1)
    assert isinstance(verdict.error, AttestationSignatureInvalid)
    assert verdict.claimed_type == SLSA_V1              # the annotation, not the payload
    signed = verify_envelope(envelope(body), {"ci": KEY.public_key()}, image_digest=D1)
    assert isinstance(signed.error, AttestationMalformed) and "JSON values" in signed.error.detail
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(AttestationMalformed, match="levels deep"):
        bounded_loads(deep, "x")
    assert bounded_loads(deep[1:-1], "x") is not None
    with pytest.raises(AttestationMalformed, match="exceeds"):
        parse_statement(b" " * (MAX_ENVELOPE_BYTES + 1))
    sig = json.loads(envelope(statement()))
    sig["signatures"][0]["sig"] = "A" * 4100
    assert "characters" in str(verify_envelope(json.dumps(sig).encode(), {}, image_digest=D1)
                               .error)


def test_the_string_scan_is_linear_on_unterminated_strings() -> None:
    """A pattern that could fail would rescan from every later quote (quadratic)."""
    import time

    from admission.core.attestations import json_skeleton
    started = time.monotonic()
    assert b'"' not in json_skeleton(b'x"\\"' * 250_000)
    assert json_skeleton(b'"a\\' + b'"\\' * 250_000) == b""
    assert time.monotonic() - started < 2


@settings(max_examples=300, deadline=None)
@given(_json)
def test_bounded_loads_is_json_loads_within_bounds(value: Any) -> None:
    from admission.core.attestations import bounded_loads, json_skeleton
    for raw in (json.dumps(value), json.dumps(value, indent=1, ensure_ascii=False)):
        data = raw.encode()
        assert bounded_loads(data, "x") == json.loads(data)
        assert b'"' not in json_skeleton(data)
    text = json.dumps(value).encode()
    values = sum(text.count(c) for c in b"[{,") - sum(
        s.count(b",") + s.count(b"[") + s.count(b"{") for s in _strings(value))
    assert values == sum(json_skeleton(text).count(c) for c in b"[{,")


def _strings(value: Any) -> list[bytes]:
    if isinstance(value, str):
        return [json.dumps(value).encode()]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_bounded_loads_raises_only_malformed(data: bytes) -> None:
    from admission.core.attestations import bounded_loads
    with contextlib.suppress(AttestationMalformed):
        bounded_loads(data, "x", max_values=8, max_depth=3)


# --- sourceRepository is the source, not a dependency (review F8) ---------------------------

GHA = "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1"


@pytest.mark.parametrize(("predicate_type", "predicate", "source"), [
    # umec provenance (any build type but GitHub's): externalParameters.source.repository
    ("slsaprovenance1", {"buildDefinition": {
        "buildType": "https://umec.io/buildtypes/oci-image/v1",
        "externalParameters": {"source": {"repository": "https://git.example/evil/app"},
                               "workflow": {"repository": "https://git.example/acme/app"}},
        "resolvedDependencies": [{"uri": "git+https://git.example/acme/app@refs/heads/main"}]},
        "runDetails": {"builder": {"id": "b"}}}, "https://git.example/evil/app"),
    # GitHub workflow build types: externalParameters.workflow.repository
    *(("slsaprovenance1", {"buildDefinition": {
        "buildType": build_type,
        "externalParameters": {"workflow": {"repository": "https://github.com/evil/app",
                                            "ref": "refs/heads/main", "path": "x.yml"},
                               "source": {"repository": "https://github.com/acme/app"},
                               "inputs": {"repository": "https://github.com/acme/app"}},
        "resolvedDependencies": [{"uri": "git+https://github.com/acme/app@refs/heads/main"}]},
        "runDetails": {"builder": {"id": "b"}}}, "https://github.com/evil/app")
      for build_type in (GHA, "https://actions.github.io/buildtypes/workflow/v1")),
    # v0.2: invocation.configSource.uri, never materials
    ("slsaprovenance02", {"builder": {"id": "b"}, "buildType": "t", "invocation": {
        "configSource": {"uri": "git+https://git.example/evil/app@refs/heads/main"}},
        "materials": [{"uri": "git+https://git.example/acme/app@refs/heads/main"}]},
     "https://git.example/evil/app"),
    ("slsaprovenance02", {"builder": {"id": "b"}, "buildType": "t",
                          "materials": [{"uri": "git+https://git.example/acme/app"}]}, None),
])
def test_the_source_repository_is_the_builds_source_only(predicate_type: str,
                                                         predicate: dict[str, Any],
                                                         source: str | None) -> None:
    facts = statement_facts(parse_statement(statement(predicate_type,
                                                      json.dumps(predicate).encode())))
    assert facts["source_repository"] == source
    assert "https://git.example/acme/app" in facts["source_repositories"] or \
        "https://github.com/acme/app" in facts["source_repositories"]


def test_a_dependency_does_not_satisfy_source_repository() -> None:
    """Provenance for evil/app listing acme/app as a resolved dependency, signed by the
    trusted key: the fact Rego compares ``sourceRepository`` with is evil/app (the webhook's
    denial: tests/admission/test_attest_registry.py)."""
    body = json.dumps({"buildDefinition": {
        "buildType": "https://umec.io/buildtypes/oci-image/v1",
        "externalParameters": {"source": {"repository": "https://git.example/evil/app"}},
        "resolvedDependencies": [{"uri": "git+https://git.example/acme/app@refs/heads/main"},
                                 {"uri": "git+https://git.example/evil/app@refs/heads/main"}]},
        "runDetails": {"builder": {"id": "https://ci.example/builder"}}}).encode()
    doc = policy([requirement(conditions={"sourceRepository": "https://git.example/acme/app"})])
    req = load_policies([doc]).policies[0].attestations[0]
    verdict = verify_envelope(envelope(statement(body=body)),
                              {key_thumbprint(KEY): KEY.public_key()}, image_digest=D1)
    facts = requirement_facts(req, [verdict])
    assert facts["attestations"][0]["source_repository"] == "https://git.example/evil/app"
