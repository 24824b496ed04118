"""The pure signed-policy checks (attest/core/policy_envelope.py): python-tuf's counting rules,
the named refusals, and a hypothesis property of the envelope parser (attacker input)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.core.policy_envelope import (
    PAYLOAD_TYPE,
    PolicyBelowThreshold,
    PolicyEnvelopeError,
    PolicyEnvelopeMalformed,
    PolicyRollback,
    PolicySignatureInvalid,
    PolicySignerUnknown,
    PolicyVersionInvalid,
    Signature,
    count_signers,
    key_id,
    pae,
    parse_envelope,
    sign_policy,
    trusted_keys,
    verify_policy_envelope,
)
from keys import KeyKind, generate_private_key

DOC = b"name: pi\nselection: {sha256: [0]}\nversion: 4\n"
A, B, C = (generate_private_key(k) for k in (KeyKind.EC_P256, KeyKind.ED25519, KeyKind.EC_P256))
TRUSTED = trusted_keys([A.public_key(), B.public_key()])


def test_pae_is_dsse_v1() -> None:
    assert pae("t", b"ab") == b"DSSEv1 1 t 2 ab"


def test_verifies_and_names_signers() -> None:
    verified = verify_policy_envelope(sign_policy(DOC, [A, B]), TRUSTED, 2, applied_version=3)
    assert (verified.policy.name, verified.version) == ("pi", 4)
    assert set(verified.signers) == {key_id(A), key_id(B)}
    assert verified.digest.startswith("sha256:")


@pytest.mark.parametrize(("signers", "threshold", "error"), [
    ([C], 1, PolicySignerUnknown),
    ([A], 2, PolicyBelowThreshold),
    ([A, C], 2, PolicyBelowThreshold),     # an unknown key never counts
])
def test_threshold_refusals(signers: list[object], threshold: int,
                            error: type[PolicyEnvelopeError]) -> None:
    with pytest.raises(error):
        verify_policy_envelope(sign_policy(DOC, signers), TRUSTED, threshold)  # type: ignore[arg-type]


def test_duplicate_signatures_count_once() -> None:
    doc = json.loads(sign_policy(DOC, [A]))
    doc["signatures"] *= 3
    raw = json.dumps(doc).encode()
    assert count_signers(parse_envelope(raw), TRUSTED)[0] == {key_id(A)}
    with pytest.raises(PolicyBelowThreshold):
        verify_policy_envelope(raw, TRUSTED, 2)


def test_empty_keyid_counts_for_the_key_it_verifies_under() -> None:
    doc = json.loads(sign_policy(DOC, [A]))
    doc["signatures"][0]["keyid"] = ""
    assert verify_policy_envelope(json.dumps(doc).encode(), TRUSTED, 1).signers == (key_id(A),)


def test_tampered_payload_is_a_bad_signature() -> None:
    doc = json.loads(sign_policy(DOC, [A]))
    doc["payload"] = base64.b64encode(DOC.replace(b"version: 4", b"version: 9")).decode()
    with pytest.raises(PolicySignatureInvalid):
        verify_policy_envelope(json.dumps(doc).encode(), TRUSTED, 1)
    doc = json.loads(sign_policy(DOC, [A]))
    doc["payloadType"] = "application/vnd.in-toto+json"
    with pytest.raises(PolicyEnvelopeMalformed):
        verify_policy_envelope(json.dumps(doc).encode(), TRUSTED, 1)


def test_versions_only_increase() -> None:
    raw = sign_policy(DOC, [A])
    for applied in (4, 5):
        with pytest.raises(PolicyRollback):
            verify_policy_envelope(raw, TRUSTED, 1, applied_version=applied)
    with pytest.raises(PolicyVersionInvalid):
        sign_policy(DOC.replace(b"version: 4\n", b""), [A])


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)


def _mutated(signature_items: list[object], payload: str, kind: str) -> bytes:
    return json.dumps({"payloadType": kind, "payload": payload,
                       "signatures": signature_items}).encode()


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(_mutated, st.lists(json_values | st.fixed_dictionaries(
        {"keyid": st.text(max_size=70), "sig": st.text(max_size=100)}), max_size=20),
        st.text(max_size=60) | st.just(base64.b64encode(DOC).decode()),
        st.sampled_from([PAYLOAD_TYPE, "x", ""]))))
def test_parser_never_crashes(raw: bytes) -> None:
    """Any bytes: a PolicyEnvelope within bounds, or a typed refusal; never another error,
    and nothing verifies without a real signature."""
    try:
        envelope = parse_envelope(raw)
    except PolicyEnvelopeError as exc:
        assert exc.check == "policy.envelope"
        return
    assert envelope.payload_type == PAYLOAD_TYPE and len(envelope.signatures) <= 16
    assert all(isinstance(s, Signature) for s in envelope.signatures)
    with pytest.raises(PolicyEnvelopeError):
        verify_policy_envelope(raw, TRUSTED, 1)
