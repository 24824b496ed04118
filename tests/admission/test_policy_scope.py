"""Issue 12, review findings F1 and F3: a tenant's policy must not reach beyond its namespace.

F1: a keyless signer's id is its issuer and subject under the digest of the trust root that
verified it, so a tenant's ImagePolicy with its own root (its own CA) and the issuer/subject a
ClusterImagePolicy trusts mints an id the cluster policy never counts: attacked over ``umec
webhook`` (policy objects from the fake Kubernetes API, a keyless signature in a real
docker-registry), in another namespace and in the tenant's own.
F3: an image is verified only with the keys, roots and attestation keys of the policies that
apply in the pod's namespace (``PolicySet.scope``), and the verification cache is keyed on a
hash of those policies: a tenant's keys are never tried for another namespace's pod, and editing
one tenant's policy does not flush another tenant's cached verdict (over the webhook's real TLS
server, real registry resolver and cosign verifier). The CRDs bound what one object may hold.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from admission.core.cosign import OCI_MANIFEST_MEDIA_TYPE, build_signature_image, signature_tag
from admission.core.keyless import KeylessAuthority, parse_trusted_root
from admission.core.policy import PolicySet, load_policies
from admission.core.reference import parse_reference
from admission.core.verify import KeylessIdentity, VerifiedSignature
from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials
from admission.service.images import CosignVerifier, RegistryClients, RegistryResolver
from admission.service.rego import RegoEvaluator
from admission.service.webhook import WebhookDeps, create_webhook_app
from admission.signing.verify import _bundle_keyless
from keys import PublicKey
from tests.support.cosign_keyless import sign_keyless
from tests.support.fake_kube_api import CLUSTER_IMAGE_POLICIES, IMAGE_POLICIES, FakeKubeApi
from tests.support.live_webhook import push_signed, serve_live
from tests.support.mini_sigstore import MiniSigstore
from tests.support.oci_images import push_image
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.webhook import (
    authority,
    key,
    kid,
    pod_spec,
    policy_doc,
    review,
    serve_tls,
    workload,
)

ISSUER = "https://token.actions.example"
SUBJECT = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KA, KB, KC = key(), key(), key()


def _keyless_doc(name: str, root: MiniSigstore, images: list[str],
                 namespace: str | None = None) -> dict[str, Any]:
    return policy_doc(name, images, [{"name": "ci", "keyless": {
        "trustedRoot": {"json": root.trusted_root().decode()},
        "identities": [{"issuer": ISSUER, "subject": SUBJECT}]}}], namespace=namespace)


def _answer(client: httpx.Client, namespace: str, image: str) -> dict[str, Any]:
    pod = workload("Pod", pod_spec([image]), namespace=namespace, uid=str(uuid.uuid4()))
    resp = client.post("/validate", json=review(pod, uid=str(uuid.uuid4())))
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["response"]
    return result


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


async def _push_keyless(registry: RunningRegistry, ca: MiniSigstore, base: str) -> str:
    """An image in the real registry with a keyless ``.sig`` made by ``ca`` for SUBJECT."""
    app = f"{base}/app"
    async with RegistryClient(retries=0, timeout=5.0) as client:
        digest = await push_image(client, f"{app}:1.0", salt=base)
        layer = sign_keyless(ca, app, digest, identity=SUBJECT, issuer=ISSUER).layer()
        ref = parse_reference(f"{app}@{digest}")
        image = build_signature_image([layer])
        await client.put_blob(ref, layer.payload)
        await client.put_blob(ref, image.config)
        await client.put_manifest(ref, image.manifest, OCI_MANIFEST_MEDIA_TYPE,
                                  tag=signature_tag(digest))
    return f"{app}@{digest}"


# --- F1 over umec webhook ------------------------------------------------------------------------

@requires_registry
def test_a_tenants_own_trust_root_cannot_sign_for_the_cluster_policy(
        tmp_path: Path, registry: RunningRegistry) -> None:
    """The reviewer's PoC as a tenant would run it: ImagePolicy ``mine`` in namespace ``evil``
    with images ["**"], its own root and the cluster's issuer/subject; the image carries a
    keyless signature from the tenant's CA. The ClusterImagePolicy ``baseline`` is not met in
    ``victim`` nor in ``evil`` (a namespace policy cannot bypass the baseline); the image signed
    by the cluster's real CA is admitted in ``victim``."""
    from umec.settings import Settings
    from umec.webhook_process import build_webhook
    real, rogue = MiniSigstore(), MiniSigstore()
    base = f"{registry.host}/scope-{uuid.uuid4().hex[:8]}"
    forged = asyncio.run(_push_keyless(registry, rogue, f"{base}/forged"))
    genuine = asyncio.run(_push_keyless(registry, real, f"{base}/genuine"))
    with FakeKubeApi() as kube:
        kube.apply(CLUSTER_IMAGE_POLICIES, _keyless_doc("baseline", real, [f"{base}/**"]))
        kube.apply(IMAGE_POLICIES, _keyless_doc("mine", rogue, ["**"], namespace="evil"))
        settings = Settings(data_dir=tmp_path / "srv", admission_policy_crds=True,
                            kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"))
        app, deps = build_webhook(settings)
        with serve_live(app, tmp_path / "certs") as (url, ca), \
                httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca)),
                             timeout=30) as client:
            _wait(lambda: len(deps.policies().policies) == 2)
            assert _answer(client, "victim", genuine)["allowed"] is True
            for namespace in ("victim", "evil"):
                denied = _answer(client, namespace, forged)
                assert denied["allowed"] is False, (namespace, denied)
                message = denied["status"]["message"]
                assert "policy.unsatisfied: ClusterImagePolicy/baseline" in message, message
                assert "0 of the required 1" in message
            # In its own namespace the tenant's policy is met: only the baseline denies.
            assert "ImagePolicy/evil/mine" not in _answer(client, "evil", forged)["status"][
                "message"]


def test_keyless_bundle_signer_id_names_the_root_that_verified_it() -> None:
    """Bundles too: a bundle from the tenant's CA, checked against the cluster's authority and
    the tenant's, verifies only under the tenant's root and gets that root's id."""
    real, rogue = MiniSigstore(), MiniSigstore()
    manifest = b'{"schemaVersion":2,"salt":"bundle-scope"}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    who = KeylessIdentity(SUBJECT, ISSUER)
    real_auth = KeylessAuthority(parse_trusted_root(real.trusted_root()), (who,))
    rogue_auth = KeylessAuthority(parse_trusted_root(rogue.trusted_root()), (who,))
    bundle = rogue.sign(manifest, identity=SUBJECT, issuer=ISSUER)
    signer = _bundle_keyless(bundle, manifest, digest, [real_auth, rogue_auth])
    assert signer.key_id == who.signer_id(rogue_auth.root.digest)
    cluster = load_policies([_keyless_doc("baseline", real, ["**"])])
    assert signer.key_id not in cluster.policies[0].key_names()
    decision = cluster.evaluate("victim", "registry.example/app", [signer], digest)
    assert not decision.verified


# --- F3: only the applicable policies' authorities, cache per applicable policies ----------

class CountingVerifier:
    """The webhook's real cosign verifier, recording which keys and roots it was handed."""

    def __init__(self, inner: CosignVerifier) -> None:
        self.inner = inner
        self.calls: list[tuple[str, frozenset[str], int]] = []

    async def verify(self, image: str, keys: Mapping[str, PublicKey],
                     credentials: Credentials | None = None,
                     keyless: Sequence[KeylessAuthority] = ()) -> Sequence[VerifiedSignature]:
        self.calls.append((image, frozenset(keys), len(keyless)))
        return await self.inner.verify(image, keys, credentials, keyless)


def _tenant(name: str, signer: Any, images: str, **kw: Any) -> dict[str, Any]:
    return policy_doc(name, [images], [authority("ci", {"ci": signer})], namespace=name, **kw)


@requires_registry
def test_tenant_keys_are_not_tried_and_tenant_edits_keep_other_caches(
        tmp_path: Path, registry: RunningRegistry) -> None:
    base = f"{registry.host}/f3-{uuid.uuid4().hex[:8]}"
    image_b = f"{base}/b/app@{push_signed(f'{base}/b/app:1.0', KB)}"
    # tenant-a's glob covers every image, and tenant-c's keys too: neither may be tried for b.
    docs = {"a": _tenant("tenant-a", KA, "**"), "b": _tenant("tenant-b", KB, f"{base}/b/**"),
            "c": _tenant("tenant-c", KC, "**")}
    current: dict[str, PolicySet] = {"set": load_policies(list(docs.values()))}

    async def main() -> None:
        async with RegistryClient(retries=0, timeout=5.0) as registry_client:
            clients = RegistryClients(registry_client)
            verifier = CountingVerifier(CosignVerifier(clients))
            deps = WebhookDeps(policies=lambda: current["set"], resolver=RegistryResolver(clients),
                               verifier=verifier, rego=RegoEvaluator())
            with serve_tls(create_webhook_app(deps), tmp_path / "certs") as (url, ca):
                async with httpx.AsyncClient(base_url=url, timeout=30, verify=ssl.
                                             create_default_context(cafile=str(ca))) as client:
                    await _checks(client, verifier, docs, current, image_b)
    asyncio.run(main())


async def _validate(client: httpx.AsyncClient, namespace: str, image: str) -> dict[str, Any]:
    pod = workload("Pod", pod_spec([image]), namespace=namespace, uid=str(uuid.uuid4()))
    resp = await client.post("/validate", json=review(pod, uid=str(uuid.uuid4())))
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["response"])


async def _checks(client: httpx.AsyncClient, verifier: CountingVerifier,
                  docs: dict[str, dict[str, Any]], current: dict[str, PolicySet],
                  image_b: str) -> None:
    assert (await _validate(client, "tenant-b", image_b))["allowed"] is True
    assert [keys for _, keys, _ in verifier.calls] == [frozenset({kid(KB)})]
    # tenant-a's pod is verified with tenant-a's key only (and is denied: b signed it).
    assert (await _validate(client, "tenant-a", image_b))["allowed"] is False
    assert verifier.calls[-1][1] == frozenset({kid(KA)}) and len(verifier.calls) == 2
    # Tenant A edits its policy (a new generation): tenant B's verdict stays cached.
    edited = copy.deepcopy(docs["a"])
    edited["spec"]["authorities"] = [authority("ci", {"ci": KC})]
    before = current["set"].generation
    current["set"] = load_policies([edited, docs["b"], docs["c"]])
    assert current["set"].generation != before
    assert (await _validate(client, "tenant-b", image_b))["allowed"] is True
    assert len(verifier.calls) == 2, verifier.calls
    # Tenant B's own edit does invalidate it: verified again, with the new key set.
    edited_b = copy.deepcopy(docs["b"])
    edited_b["spec"]["authorities"] = [authority("ci", {"ci": KB, "extra": KC}, threshold=1)]
    current["set"] = load_policies([edited, edited_b, docs["c"]])
    assert (await _validate(client, "tenant-b", image_b))["allowed"] is True
    assert len(verifier.calls) == 3 and verifier.calls[-1][1] == frozenset({kid(KB), kid(KC)})


def test_scope_holds_only_the_applicable_policies_authorities() -> None:
    real, rogue = MiniSigstore(), MiniSigstore()
    cluster = _keyless_doc("baseline", real, ["registry.example/**"])
    tenant = _keyless_doc("mine", rogue, ["**"], namespace="evil")
    keyed = _tenant("tenant-a", KA, "**")
    ps = load_policies([cluster, tenant, keyed])
    victim = ps.scope("victim", "registry.example/victim/app")
    assert [p.ref for p in victim.policies] == ["ClusterImagePolicy/baseline"]
    assert [a.root.digest for a in victim.keyless] == \
        [parse_trusted_root(real.trusted_root()).digest]
    assert victim.keys == {} and victim.attestation_keys == {}
    assert set(ps.scope("tenant-a", "x.example/app").keys) == {kid(KA)}
    assert ps.scope("evil", "x.example/app").keyless != ()
    # The cache key is the applicable policies only: same for two namespaces with the same
    # applicable set, unchanged by another namespace's edit, changed by an applicable one.
    assert ps.scope("victim", "registry.example/a").digest == \
        ps.scope("other", "registry.example/a").digest
    ps2 = load_policies([cluster, tenant, _tenant("tenant-a", KB, "**")])
    assert ps2.scope("victim", "registry.example/a").digest == \
        ps.scope("victim", "registry.example/a").digest
    assert ps2.scope("tenant-a", "registry.example/a").digest != \
        ps.scope("tenant-a", "registry.example/a").digest


# --- F3: CRD bounds and the tenant quota example ---------------------------------------------

def _schemas() -> list[dict[str, Any]]:
    return [crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            for crd in yaml.safe_load_all((DEPLOY / "crd-imagepolicy.yaml").read_text())]


@pytest.mark.parametrize(("field", "value"), [
    ("keys", [{"name": f"k{i}", "pem": "x"} for i in range(33)]),
    ("pem", "x" * 16385),
    ("authorities", 17),
    ("images", 65),
    ("attestations", 17),
    ("identities", 33),
    ("trustedRoot", "x" * (256 * 1024 + 1)),
])
def test_the_crds_bound_what_one_object_holds(field: str, value: Any) -> None:
    key_doc = {"name": "k", "pem": "x"}
    spec: dict[str, Any] = {"images": ["**"], "authorities": [{"name": "a", "keys": [key_doc]}]}
    ok = copy.deepcopy(spec)
    if field == "keys":
        spec["authorities"][0]["keys"] = value
    elif field == "pem":
        spec["authorities"][0]["keys"][0]["pem"] = value
    elif field == "authorities":
        spec["authorities"] = [{"name": f"a{i}", "keys": [key_doc]} for i in range(value)]
    elif field == "images":
        spec["images"] = [f"r.example/{i}" for i in range(value)]
    elif field == "attestations":
        spec["attestations"] = [{"name": f"t{i}", "predicateType": "slsaprovenance1",
                                 "keys": [key_doc]} for i in range(value)]
    else:
        spec["authorities"] = [{"name": "kl", "keyless": {
            "trustedRoot": {"json": value if field == "trustedRoot" else "{}"},
            "identities": [{"issuer": ISSUER, "subject": f"s{i}"} for i in
                           range(value if field == "identities" else 1)]}}]
    for schema in _schemas():
        jsonschema.validate({"spec": ok}, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"spec": spec}, schema)


def test_the_tenant_quota_example_caps_image_policies() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "examples" / "tenant-policy-quota.yaml")
                                   .read_text()))
    quota = next(d for d in docs if d["kind"] == "ResourceQuota")
    assert int(quota["spec"]["hard"]["count/imagepolicies.umec.io"]) <= 10
    assert json.dumps(quota).count("count/imagepolicies.umec.io") == 1
