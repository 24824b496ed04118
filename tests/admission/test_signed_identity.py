"""Which image a signature vouches for (``spec.signedIdentity``), and keyless authorities in the
ImagePolicy: parsing, the policy facts, Rego's decision, and the webhook's admission flow over a
real docker-registry (registry resolver, cosign verifier, embedded Rego) for a mirrored image
signed for its upstream name and for a keyless legacy signature."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.core.cosign import (
    OCI_MANIFEST_MEDIA_TYPE,
    build_signature_image,
    new_signature_layer,
    signature_tag,
    simple_signing_payload,
)
from admission.core.identity import SignedIdentity, parse_signed_identity
from admission.core.policy import ImageDecision, PolicyInvalid, load_policies
from admission.core.reference import parse_reference
from admission.core.rego_input import container_facts, review_facts
from admission.core.review import parse_review
from admission.registry.client import RegistryClient
from admission.service.admit import WebhookDeps
from admission.service.images import CosignVerifier, RegistryClients, RegistryResolver
from admission.service.rego import RegoEvaluator
from admission.signing.sign import sign_bytes
from tests.support.cosign_keyless import sign_keyless
from tests.support.mini_sigstore import MiniSigstore
from tests.support.oci_images import push_image
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.webhook import (
    D1,
    Sig,
    authority,
    key,
    kid,
    pod_spec,
    policy_doc,
    review,
    workload,
)

UP = "docker.io/library/nginx"
MIRROR = "mirror.local/library/nginx"
A1 = key()
REGO = RegoEvaluator()


def _policy(identity: dict[str, Any] | None, images: str = "**") -> dict[str, Any]:
    doc = policy_doc("p", [images], [authority("ci", {"ci": A1})])
    if identity is not None:
        doc["spec"]["signedIdentity"] = identity
    return doc


def _decide(decision: ImageDecision, image: str) -> Any:
    container = container_facts("spec.containers[0]", image, D1, decision=decision)
    return REGO.decide(review_facts("ns", "Pod", "CREATE", [container]))


# --- SignedIdentity ----------------------------------------------------------------------------

@pytest.mark.parametrize(("identity", "image", "signed", "ok"), [
    (SignedIdentity(), f"{MIRROR}:1.25@{D1}", MIRROR, True),
    (SignedIdentity(), f"{MIRROR}@{D1}", "index.docker.io/library/nginx", False),
    (SignedIdentity(), "nginx:1.25", "index.docker.io/library/nginx", True),   # Hub spellings
    (SignedIdentity(), f"{MIRROR}@{D1}", None, True),            # a bundle names no image
    (SignedIdentity(), f"{MIRROR}@{D1}", "not a reference", False),
    (SignedIdentity("matchExact"), f"{UP}:1.25@{D1}", f"{UP}:1.25", True),
    (SignedIdentity("matchExact"), f"{UP}:1.25@{D1}", f"{UP}@{D1}", True),
    (SignedIdentity("matchExact"), f"{UP}:1.25@{D1}", f"{UP}:1.25@{D1}", True),
    (SignedIdentity("matchExact"), f"{UP}:1.26@{D1}", f"{UP}:1.25", False),     # another tag
    (SignedIdentity("matchExact"), f"{UP}@{D1}", f"{UP}:1.25", False),          # tag not named
    (SignedIdentity("matchExact"), f"{UP}:1.25@{D1}", f"{UP}@sha256:{'b' * 64}", False),
    (SignedIdentity("matchExact"), f"{UP}:1.25@{D1}", UP, False),    # cosign's repo-only
    (SignedIdentity("matchExact"), f"{UP}:latest@{D1}", UP, False),  # no implied :latest
    (SignedIdentity("matchExact"), f"{UP}:latest@{D1}", f"{UP}:latest", True),
    (SignedIdentity("matchExact"), f"{UP}:1.25@{D1}", None, False),
    (SignedIdentity("matchExact"), f"{MIRROR}:1.25@{D1}", f"{UP}:1.25", False),
    (SignedIdentity("exactRepository", UP), f"{MIRROR}:1.25@{D1}", "index.docker.io/nginx",
     True),
    (SignedIdentity("exactRepository", UP), f"{MIRROR}:1.25@{D1}", MIRROR, False),
    (SignedIdentity("exactRepository", UP), f"{MIRROR}@{D1}", None, False),
    (SignedIdentity("ignore"), f"{MIRROR}@{D1}", "evil.example/other", True),
    (SignedIdentity("ignore"), f"{MIRROR}@{D1}", None, True),
])
def test_signed_identity_rules(identity: SignedIdentity, image: str, signed: str | None,
                               ok: bool) -> None:
    assert identity.accepts(image, signed) is ok


@pytest.mark.parametrize("doc", [
    "matchExact", {"type": "exact"}, {"type": "exactRepository"},
    {"type": "matchExact", "dockerRepository": UP}, {"type": "ignore", "extra": 1},
    {"type": "exactRepository", "dockerRepository": f"{UP}:1.25"},
    {"type": "exactRepository", "dockerRepository": "Not A Repo"},
])
def test_bad_signed_identity_is_a_policy_error(doc: Any) -> None:
    with pytest.raises(PolicyInvalid, match="signedIdentity"):
        load_policies([_policy(doc)])


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(st.none(), st.text(max_size=10), st.dictionaries(
    st.sampled_from(["type", "dockerRepository", "x"]),
    st.one_of(st.sampled_from(["matchExact", "exactRepository", "ignore", UP, f"{UP}:1"]),
              st.text(max_size=20), st.integers()), max_size=3)),
       image=st.text(max_size=40), signed=st.one_of(st.none(), st.text(max_size=40)))
def test_signed_identity_parser_and_rules_never_crash(doc: Any, image: str,
                                                      signed: str | None) -> None:
    try:
        identity = parse_signed_identity(doc, "spec.signedIdentity")
    except ValueError:
        return
    assert identity.accepts(image, signed) in (True, False)


# --- the policy facts and Rego -----------------------------------------------------------------

def test_mirrored_image_signed_for_the_upstream_name() -> None:
    """The mirror serves the upstream digest with the upstream's signature: the default refuses
    it (the signature names another repository), exactRepository and ignore admit it, and
    ignore says so in a warning."""
    sigs = [Sig(D1, kid(A1), reference="index.docker.io/library/nginx")]
    image = f"{MIRROR}:1.25@{D1}"
    default = load_policies([_policy(None)]).evaluate("ns", MIRROR, sigs, D1, image=image)
    assert not _decide(default, image).allowed
    assert "signedIdentity matchRepository refuses" in default.matched[0].reasons[-1]
    assert "ci signed index.docker.io/library/nginx" in default.matched[0].reasons[-1]
    upstream = load_policies([_policy({"type": "exactRepository", "dockerRepository": UP})])
    verdict = _decide(upstream.evaluate("ns", MIRROR, sigs, D1, image=image), image)
    assert verdict.allowed and not verdict.warnings
    ignore = load_policies([_policy({"type": "ignore"})])
    decision = ignore.evaluate("ns", MIRROR, sigs, D1, image=image)
    verdict = _decide(decision, image)
    assert verdict.allowed
    assert list(verdict.warnings) == [
        f"spec.containers[0]: image {image}: signature.identity.ignored: ClusterImagePolicy/p "
        f"accepts signatures naming any image (signedIdentity: ignore)"]


def test_exact_reference_needs_the_signed_tag() -> None:
    sigs = [Sig(D1, kid(A1), reference=f"{UP}:1.25")]
    exact = load_policies([_policy({"type": "matchExact"})])
    for image, ok in [(f"nginx:1.25@{D1}", True), (f"nginx:1.26@{D1}", False),
                      (f"nginx@{D1}", False)]:
        assert _decide(exact.evaluate("ns", UP, sigs, D1, image=image), image).allowed is ok
    # cosign's default docker-reference (repository only) never satisfies matchExact.
    repo_only = [Sig(D1, kid(A1), reference=UP)]
    image = f"nginx:1.25@{D1}"
    assert not _decide(exact.evaluate("ns", UP, repo_only, D1, image=image), image).allowed


def test_the_default_keeps_todays_repository_binding() -> None:
    ps = load_policies([_policy(None)])
    image = f"registry.example/team-b/app@{D1}"
    stolen = [Sig(D1, kid(A1), reference="registry.example/team-a/app")]
    assert not _decide(ps.evaluate("ns", "registry.example/team-b/app", stolen, D1,
                                   image=image), image).allowed
    own = [Sig(D1, kid(A1), reference="registry.example/team-b/app")]
    assert _decide(ps.evaluate("ns", "registry.example/team-b/app", own, D1, image=image),
                   image).allowed


def test_generation_changes_with_the_signed_identity() -> None:
    generations = {load_policies([_policy(doc)]).generation for doc in (
        None, {"type": "matchExact"}, {"type": "ignore"},
        {"type": "exactRepository", "dockerRepository": UP})}
    assert len(generations) == 4


# --- keyless authorities -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mini() -> MiniSigstore:
    return MiniSigstore()


ISSUER = "https://token.actions.example"
WORKFLOW = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"


def _keyless_policy(mini: MiniSigstore, *identities: tuple[str, str], threshold: int = 1,
                    images: str = "**", identity: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    doc = policy_doc("kl", [images], [{
        "name": "release", "threshold": threshold,
        "keyless": {"trustedRoot": {"json": mini.trusted_root().decode()},
                    "identities": [{"issuer": i, "subject": s} for i, s in identities]}}])
    if identity is not None:
        doc["spec"]["signedIdentity"] = identity
    return doc


def test_keyless_authority_parses_and_counts_identities(mini: MiniSigstore) -> None:
    ps = load_policies([_keyless_policy(mini, (ISSUER, WORKFLOW), (ISSUER, "ci@example.org"),
                                        threshold=2)])
    (authority_,) = ps.keyless_for("ns", "registry.example/app")
    assert [i.identity for i in authority_.identities] == [WORKFLOW, "ci@example.org"]
    assert ps.keys_for("ns", "registry.example/app") == {}
    # Signer ids are scoped to the trust root (issue 12, F1).
    root = authority_.root.digest
    one = [Sig(D1, f"keyless:{root} {ISSUER} {WORKFLOW}", reference="registry.example/app")]
    decision = ps.evaluate("ns", "registry.example/app", one, D1)
    assert not decision.verified and "1 of the required 2" in decision.matched[0].reasons[0]
    both = [*one, Sig(D1, f"keyless:{root} {ISSUER} ci@example.org",
                      reference="registry.example/app")]
    assert ps.evaluate("ns", "registry.example/app", both, D1).verified


@pytest.mark.parametrize(("edit", "because"), [
    ({"keys": []}, "not keys"),
    ({"required": ["x"]}, "not keys"),
    ({"threshold": 3}, "threshold"),
    ({"keyless": {"identities": [{"issuer": ISSUER, "subject": "a"}]}}, "trustedRoot"),
    ({"keyless": {"trustedRoot": {"json": "{}"}, "identities": [
        {"issuer": ISSUER, "subject": "a"}]}}, "trustedRoot"),
    ({"keyless": {"trustedRoot": {"file": "/x"}, "identities": [
        {"issuer": ISSUER, "subject": "a"}]}}, "file references are not allowed"),
    ({"keyless": {"trustedRoot": {"json": "{}"}, "identities": []}}, "trustedRoot"),
    ({"keyless": {"trustedRoot": {"json": "{}"}, "identities": [], "url": "x"}}, "unknown"),
])
def test_bad_keyless_authorities_are_policy_errors(mini: MiniSigstore, edit: dict[str, Any],
                                                  because: str) -> None:
    doc = _keyless_policy(mini, (ISSUER, WORKFLOW), (ISSUER, "ci@example.org"))
    doc["spec"]["authorities"][0].update(edit)
    with pytest.raises(PolicyInvalid, match=because):
        load_policies([doc])


def test_keyless_identity_issuer_must_be_a_url_without_spaces(mini: MiniSigstore) -> None:
    with pytest.raises(PolicyInvalid, match="issuer"):
        load_policies([_keyless_policy(mini, ("https://a.example b", WORKFLOW))])


# --- the webhook's flow over a real registry ---------------------------------------------------

def _admit(registry: RunningRegistry, docs: list[dict[str, Any]],
           image: str) -> dict[str, Any]:
    """/validate for a one-container pod running ``image``, with the webhook's real registry
    resolver, cosign verifier and embedded Rego."""
    async def main() -> dict[str, Any]:
        async with RegistryClient(retries=0, timeout=5.0) as client:
            clients = RegistryClients(client)
            deps = WebhookDeps(policies=lambda: load_policies(docs),
                               resolver=RegistryResolver(clients),
                               verifier=CosignVerifier(clients), rego=REGO)
            pod = workload("Pod", pod_spec([image]), uid="pod-1")
            answer = await deps.admitter.validate(
                parse_review(json.dumps(review(pod)).encode()))
            return dict(answer["response"])
    return asyncio.run(main())


async def _push_sig(client: RegistryClient, repository: str, digest: str,
                    layer: Any) -> None:
    ref = parse_reference(f"{repository}@{digest}")
    image = build_signature_image([layer])
    await client.put_blob(ref, layer.payload)
    await client.put_blob(ref, image.config)
    await client.put_manifest(ref, image.manifest, OCI_MANIFEST_MEDIA_TYPE,
                              tag=signature_tag(digest))


@requires_registry
def test_webhook_admits_a_mirror_only_as_its_signed_identity_allows(
        registry: RunningRegistry, caplog: pytest.LogCaptureFixture) -> None:
    base = f"{registry.host}/si-{uuid.uuid4().hex[:8]}"
    upstream, mirror = f"{base}/upstream/app", f"{base}/mirror/app"

    async def setup() -> str:
        async with RegistryClient(retries=0, timeout=5.0) as client:
            digest = await push_image(client, f"{upstream}:1.0", salt=base)
            assert await push_image(client, f"{mirror}:1.0", salt=base) == digest
            # The mirror copies the upstream's .sig: a signature naming the upstream.
            payload = simple_signing_payload(upstream, digest)
            await _push_sig(client, mirror, digest,
                            new_signature_layer(payload, sign_bytes(A1, payload)))
            return digest
    digest = asyncio.run(setup())
    image = f"{mirror}:1.0@{digest}"
    denied = _admit(registry, [_policy(None, f"{base}/**")], image)
    assert denied["allowed"] is False
    assert "signedIdentity matchRepository refuses" in denied["status"]["message"]
    allowed = _admit(registry, [_policy({"type": "exactRepository", "dockerRepository":
                                         upstream}, f"{base}/**")], image)
    assert allowed["allowed"] is True and "warnings" not in allowed
    caplog.set_level(logging.WARNING, "umec.admission.webhook")
    ignored = _admit(registry, [_policy({"type": "ignore"}, f"{base}/**")], image)
    assert ignored["allowed"] is True
    assert any("signature.identity.ignored" in w for w in ignored["warnings"])
    logged = [r for r in caplog.records if getattr(r, "check", "") ==
              "signature.identity.ignored"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    assert getattr(logged[0], "image", "") == image


@requires_registry
def test_webhook_verifies_keyless_legacy_signatures(registry: RunningRegistry,
                                                    mini: MiniSigstore) -> None:
    base = f"{registry.host}/kl-{uuid.uuid4().hex[:8]}"
    app = f"{base}/app"

    async def setup() -> str:
        async with RegistryClient(retries=0, timeout=5.0) as client:
            digest = await push_image(client, f"{app}:1.0", salt=base)
            signed = sign_keyless(mini, app, digest, identity=WORKFLOW, issuer=ISSUER)
            await _push_sig(client, app, digest, signed.layer())
            return digest
    digest = asyncio.run(setup())
    image = f"{app}:1.0@{digest}"
    ok = _admit(registry, [_keyless_policy(mini, (ISSUER, WORKFLOW), images=f"{base}/**")],
                image)
    assert ok["allowed"] is True, ok
    other = _admit(registry, [_keyless_policy(mini, (ISSUER, "mallory@example.org"),
                                              images=f"{base}/**")], image)
    assert other["allowed"] is False and "0 of the required 1" in other["status"]["message"]
    foreign_root = MiniSigstore()
    rogue = _admit(registry, [_keyless_policy(foreign_root, (ISSUER, WORKFLOW),
                                              images=f"{base}/**")], image)
    assert rogue["allowed"] is False


def test_keyless_policy_yaml_round_trip(mini: MiniSigstore) -> None:
    text = yaml.safe_dump(_keyless_policy(mini, (ISSUER, WORKFLOW)))
    assert load_policies([yaml.safe_load(text)]).generation == \
        load_policies([_keyless_policy(mini, (ISSUER, WORKFLOW))]).generation
    other_root = MiniSigstore()
    assert load_policies([_keyless_policy(other_root, (ISSUER, WORKFLOW))]).generation != \
        load_policies([_keyless_policy(mini, (ISSUER, WORKFLOW))]).generation


def test_the_crds_accept_keyless_authorities_and_signed_identity(mini: MiniSigstore) -> None:
    """What the parser accepts, the CRDs' schemas accept too (kubectl would otherwise refuse
    or prune it), and a keyless authority with keys too is refused by both."""
    from pathlib import Path

    import jsonschema
    crds = list(yaml.safe_load_all((Path(__file__).resolve().parents[2] / "deploy" /
                                    "crd-imagepolicy.yaml").read_text()))
    doc = _keyless_policy(mini, (ISSUER, WORKFLOW), identity={
        "type": "exactRepository", "dockerRepository": UP})
    load_policies([doc])
    for crd in crds:
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.validate({"spec": doc["spec"]}, schema)
        both = json.loads(json.dumps(doc["spec"]))
        both["authorities"][0]["keys"] = [{"name": "k", "pem": "x"}]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"spec": both}, schema)
