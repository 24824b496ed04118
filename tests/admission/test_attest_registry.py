"""Attestations against a real docker-registry: `attest` writes cosign's `.att` layout (append,
--replace, no duplicates), verification reads it back, and the webhook -- real registry client,
cosign verifier, attestation source, Rego, over real TLS -- denies every attack with its check
id: another signer, another digest, another predicate type or builder, a tampered payload, an
envelope replayed from another image, and none at all."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from admission.core.attestations import (
    DSSE_MEDIA_TYPE,
    SLSA_V1,
    SPDX,
    attestation_layer,
    attestation_layer_refs,
    attestation_tag,
    build_attestation_image,
    build_statement,
    sign_envelope,
)
from admission.core.cosign import (
    OCI_MANIFEST_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    SignatureLayer,
    signature_config,
)
from admission.core.policy import load_policies
from admission.core.reference import ImageReference, parse_reference
from admission.registry.client import RegistryClient
from admission.service.admit import WebhookDeps
from admission.service.attestations import RegistryAttestations
from admission.service.images import CosignVerifier, RegistryClients, RegistryResolver
from admission.service.rego import RegoEvaluator
from admission.service.webhook import create_webhook_app
from admission.signing.attest import attest_image, read_attestations, verify_image_attestations
from admission.signing.sign import sign_bytes, sign_image
from keys import generate_private_key, public_key_pem
from tests.support.oci_images import push_image, skopeo_inspect
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.webhook import pod_spec, review, serve_tls, workload

pytestmark = requires_registry
T = TypeVar("T")
KEY = generate_private_key()
EVIL = generate_private_key()
BUILDER = "https://ci.example/acme/app/.github/workflows/build.yml@refs/heads/main"
SOURCE = "https://git.example/acme/app"


def run(body: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with RegistryClient(retries=0, timeout=10.0) as client:
            return await body(client)
    return asyncio.run(main())


GHA = "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1"


def provenance(builder: str = BUILDER, source: str = SOURCE, deps: tuple[str, ...] = (),
               github: bool = False) -> bytes:
    """umec provenance's form, or (``github``) a GitHub workflow build type's; ``deps`` are
    further resolved dependencies (another repository the build fetched)."""
    where = {"workflow": {"repository": source, "ref": "refs/heads/main",
                          "path": ".github/workflows/build.yml"}} if github else \
        {"source": {"repository": source, "ref": "refs/heads/main"}}
    resolved = [{"uri": f"git+{uri}@refs/heads/main", "digest": {"gitCommit": "c0" * 20}}
                for uri in (source, *deps)]
    return json.dumps({
        "buildDefinition": {"buildType": GHA if github else
                            "https://umec.io/buildtypes/oci-image/v1",
                            "externalParameters": where, "internalParameters": {},
                            "resolvedDependencies": resolved},
        "runDetails": {"builder": {"id": builder}, "metadata": {}}}).encode()


SBOM = json.dumps({"spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT",
                   "packages": [{"name": "libc6", "versionInfo": "2.36-9"}]}).encode()


def test_attest_writes_cosigns_layout_appends_replaces_and_verifies(
        registry: RunningRegistry) -> None:
    name = f"{registry.host}/at-{uuid.uuid4().hex[:8]}/app"

    async def body(client: RegistryClient) -> None:
        digest = await push_image(client, f"{name}:v1")
        ref = parse_reference(f"{name}:v1")
        got, envelope, appended = await attest_image(client, ref, KEY, type_name="slsaprovenance1",
                                                     predicate=provenance())
        assert got == digest and appended
        tag = ref.with_tag(attestation_tag(digest))
        manifest = await client.get_manifest(tag)
        assert manifest.media_type == OCI_MANIFEST_MEDIA_TYPE
        layer = manifest.json["layers"][0]
        assert layer["mediaType"] == DSSE_MEDIA_TYPE
        assert layer["annotations"] == {SIGNATURE_ANNOTATION: "", "predicateType": SLSA_V1}
        assert await client.get_blob(ref, layer["digest"]) == envelope
        config = manifest.config()
        assert config is not None
        assert await client.get_blob(ref, config.digest) == signature_config([layer["digest"]])
        if shutil.which("skopeo"):  # an independent reader sees the same manifest bytes
            raw = await asyncio.to_thread(skopeo_inspect, f"{name}:{attestation_tag(digest)}",
                                          raw=True)
            assert raw == manifest.raw

        # Another type appends; the same statement by the same key is not added twice.
        await attest_image(client, ref, KEY, type_name="spdxjson", predicate=SBOM)
        _, _, again = await attest_image(client, ref, KEY, type_name="spdxjson", predicate=SBOM)
        assert not again
        # --replace swaps the provenance (by the statement's type), keeps the SBOM.
        await attest_image(client, ref.with_digest(digest), KEY, type_name="slsaprovenance1",
                           predicate=provenance(builder="https://ci.example/v2"),
                           replace=True)
        stored = await read_attestations(client, ref, digest)
        assert [r.predicate_type for r, _ in stored] == [SPDX, SLSA_V1]
        verdicts = await verify_image_attestations(client, ref.with_digest(digest),
                                                   {"ci": KEY.public_key()})
        assert [v.error for v in verdicts] == [None, None]
        facts = [v.statement.predicate for v in verdicts if v.statement is not None]
        assert facts[1]["runDetails"]["builder"]["id"] == "https://ci.example/v2"
        # Nothing attached: no verdicts; a tag is resolved before the .att lookup.
        other = await push_image(client, f"{name}:bare", salt="bare")
        assert await verify_image_attestations(client, ref.with_digest(other),
                                               {"ci": KEY.public_key()}) == []

    run(body)


# --- the webhook against every attack ------------------------------------------------------

async def _attach(client: RegistryClient, ref: ImageReference, digest: str,
                  envelopes: list[tuple[bytes, str]]) -> None:
    """Push an .att manifest for ``digest`` holding exactly these (envelope, predicate type)."""
    layers = [attestation_layer(raw, kind) for raw, kind in envelopes]
    image = build_attestation_image(layers)
    for layer in layers:
        await client.put_blob(ref, layer.payload)
    await client.put_blob(ref, image.config)
    await client.put_manifest(ref, image.manifest, OCI_MANIFEST_MEDIA_TYPE,
                              tag=attestation_tag(digest))


def _signed(kind: str, predicate: bytes, repo: str, digest: str, key: Any = KEY) -> bytes:
    statement = build_statement(kind, predicate, repository=repo, digest=digest,
                                timestamp="2025-01-01T00:00:00Z")
    return sign_envelope(statement, lambda m: sign_bytes(key, m))


async def _scenarios(client: RegistryClient, name: str) -> dict[str, str]:
    """One image per case, each signed by KEY (the signature policy holds for all)."""
    ref = parse_reference(f"{name}:x")
    repo = name
    cases = ["good", "other_key", "for_other_digest", "wrong_type", "evil_builder",
             "other_source", "tampered", "replayed", "missing", "source_as_dependency",
             "github_source_as_dependency", "good_github"]
    digests = {c: await push_image(client, f"{name}:{c}", salt=c) for c in cases}
    for c in cases:
        await sign_image(client, ref.with_digest(digests[c]), KEY)
    sbom = {c: (_signed("spdxjson", SBOM, repo, d), SPDX) for c, d in digests.items()}

    def prov(case: str, **kw: Any) -> tuple[bytes, str]:
        return _signed("slsaprovenance1", provenance(**kw), repo, digests[case]), SLSA_V1

    await _attach(client, ref, digests["good"], [prov("good"), sbom["good"]])
    await _attach(client, ref, digests["other_key"], [
        (_signed("slsaprovenance1", provenance(), repo, digests["other_key"], EVIL), SLSA_V1),
        sbom["other_key"]])
    await _attach(client, ref, digests["for_other_digest"], [prov("good"),
                                                            sbom["for_other_digest"]])
    await _attach(client, ref, digests["wrong_type"], [
        (_signed("custom", provenance(), repo, digests["wrong_type"]),
         "https://cosign.sigstore.dev/attestation/v1"), sbom["wrong_type"]])
    await _attach(client, ref, digests["evil_builder"], [
        prov("evil_builder", builder="https://evil.example/builder"), sbom["evil_builder"]])
    await _attach(client, ref, digests["other_source"], [
        prov("other_source", source="https://git.example/evil/fork"), sbom["other_source"]])
    # Provenance of evil/fork that fetched SOURCE: a dependency is not the source (review F8).
    for case, github in (("source_as_dependency", False), ("github_source_as_dependency", True)):
        await _attach(client, ref, digests[case], [prov(
            case, source="https://git.example/evil/fork", deps=(SOURCE,), github=github),
            sbom[case]])
    await _attach(client, ref, digests["good_github"], [
        prov("good_github", github=True, deps=("https://git.example/acme/lib",)),
        sbom["good_github"]])
    honest, _ = prov("tampered")
    doc = json.loads(honest)
    statement = json.loads(build_statement("slsaprovenance1", provenance(
        builder="https://evil.example/builder"), repository=repo, digest=digests["tampered"],
        timestamp="x"))
    import base64
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    await _attach(client, ref, digests["tampered"], [(json.dumps(doc).encode(), SLSA_V1),
                                                     sbom["tampered"]])
    # The good image's whole .att manifest, copied to another image's .att tag.
    good_att = await client.get_manifest(ref.with_tag(attestation_tag(digests["good"])))
    await client.put_manifest(ref, good_att.raw, good_att.media_type,
                              tag=attestation_tag(digests["replayed"]))
    return digests


@pytest.fixture
def webhook(registry: RunningRegistry, tmp_path: Path
            ) -> Iterator[tuple[httpx.Client, str, dict[str, str]]]:
    name = f"{registry.host}/wa-{uuid.uuid4().hex[:8]}/app"
    digests = run(lambda client: _scenarios(client, name))
    pem = public_key_pem(KEY).decode()
    policies = load_policies([{
        "apiVersion": "umec.io/v1alpha1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "attested"},
        "spec": {"images": [f"{registry.host}/**"],
                 "authorities": [{"name": "ci", "keys": [{"name": "ci", "pem": pem}]}],
                 "attestations": [
                     {"name": "provenance", "predicateType": "slsaprovenance1",
                      "keys": [{"name": "ci", "pem": pem}],
                      "conditions": {"builderId": BUILDER, "sourceRepository": SOURCE}},
                     {"name": "sbom", "predicateType": "sbom",
                      "keys": [{"name": "ci", "pem": pem}]}]}}])
    clients = RegistryClients(RegistryClient(retries=0, timeout=5.0))
    deps = WebhookDeps(policies=lambda: policies, resolver=RegistryResolver(clients),
                       verifier=CosignVerifier(clients), rego=RegoEvaluator(),
                       attestations=RegistryAttestations(clients), timeout_seconds=20.0)
    with serve_tls(create_webhook_app(deps), tmp_path / "certs") as (url, ca), \
            httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca)),
                         timeout=30) as client:
        yield client, name, digests


def validate(client: httpx.Client, image: str, uid: str) -> dict[str, Any]:
    doc = review(workload("Pod", pod_spec([image]), uid=uid), uid=uid)
    answer = client.post("/validate", json=doc)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["response"])


EXPECTED = {
    "other_key": "attestation.signature",
    "for_other_digest": "attestation.subject",
    "wrong_type": "attestation.predicate",
    "evil_builder": "attestation.predicate",
    "other_source": "attestation.predicate",
    "source_as_dependency": "attestation.predicate",
    "github_source_as_dependency": "attestation.predicate",
    "tampered": "attestation.signature",
    "replayed": "attestation.subject",
    "missing": "attestation.missing",
}


def test_webhook_admits_the_attested_image_and_denies_each_attack(
        webhook: tuple[httpx.Client, str, dict[str, str]]) -> None:
    client, name, digests = webhook
    for case in ("good", "good_github"):
        good = validate(client, f"{name}@{digests[case]}", case)
        assert good["allowed"] is True, good
    for case, check in EXPECTED.items():
        answer = validate(client, f"{name}@{digests[case]}", case)
        assert answer["allowed"] is False, (case, answer)
        message = answer["status"]["message"]
        provenance_denials = [m for m in message.split("; spec.")
                              if "attestation provenance" in m]
        assert len(provenance_denials) == 1, (case, message)
        assert f": {check}: ClusterImagePolicy/attested: attestation provenance" in \
            provenance_denials[0], (case, message)
        # The signature policy itself held: only attestations are named.
        assert "policy.unsatisfied" not in message, (case, message)
    evil = validate(client, f"{name}@{digests['evil_builder']}", "evil2")["status"]["message"]
    assert "builder_id is https://evil.example/builder, want " + BUILDER in evil
    for case in ("source_as_dependency", "github_source_as_dependency"):
        fork = validate(client, f"{name}@{digests[case]}", case + "2")["status"]["message"]
        assert "source_repository is https://git.example/evil/fork, want " + SOURCE in fork
    missing = validate(client, f"{name}@{digests['missing']}", "m2")["status"]["message"]
    assert "attestation sbom" in missing      # both requirements are named


def test_envelope_blob_size_is_capped_by_the_descriptor(registry: RunningRegistry) -> None:
    """A manifest that understates a layer's size cannot make us read more than it says."""
    name = f"{registry.host}/cap-{uuid.uuid4().hex[:8]}/app"

    async def body(client: RegistryClient) -> None:
        digest = await push_image(client, f"{name}:v1")
        ref = parse_reference(f"{name}:v1")
        raw = _signed("spdxjson", SBOM, name, digest)
        layer = attestation_layer(raw, SPDX)
        image = build_attestation_image([layer])
        doc = json.loads(image.manifest)
        doc["layers"][0]["size"] = 10
        await client.put_blob(ref, layer.payload)
        await client.put_blob(ref, image.config)
        await client.put_manifest(ref, json.dumps(doc).encode(), OCI_MANIFEST_MEDIA_TYPE,
                                  tag=attestation_tag(digest))
        assert attestation_layer_refs(doc)[0].size == 10
        from admission.registry.errors import RegistryError
        with pytest.raises(RegistryError):
            await verify_image_attestations(client, ref.with_digest(digest),
                                            {"ci": KEY.public_key()})
        assert SignatureLayer(raw, {}).digest == layer.digest

    run(body)
