"""An OpenFaaS function, in faas-netes' exact object shapes, goes through admission and gets
tokens like any tenant's workload.

Real parts: docker-registry with the function's image pushed and signed (what `faas-cli push`
and `umec sign` do in CI), ``umec webhook`` as ``build_webhook`` wires it (policies from an
ImagePolicy object in ``openfaas-fn``, watched on the fake API server), and a real ``umec server``
(``node-a`` trusted by its simulated TPM) sharing the webhook's database. The API server's part
is played step by step: the Deployment faas-netes writes is mutated (its image pinned) and
validated; the Pod its ReplicaSet creates is mutated (the token volume injected, since the
function's stack.yml annotates ``umec.io/token: inject``) and validated (recorded); the kubelet
then projects a token with the injected volume's audience, which the function exchanges."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from admission.core.token_volume import ANNOTATION, INJECT, MOUNT_PATH, VOLUME
from keys import PrivateKey
from mec_api.tokens.issuer import TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from tests.support.fake_kube import apply_json_patch
from tests.support.fake_kube_api import IMAGE_POLICIES, FakeKubeApi
from tests.support.live_webhook import push_signed
from tests.support.openfaas import FUNCTION_NAMESPACE, faas_netes_deployment, replicaset_pod
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.revocation_site import Site, site_settings, trusted_node
from tests.support.tokens import ClusterIssuer
from tests.support.webhook import authority, key, policy_doc, review
from umec.app import build_server
from umec.db import open_database
from umec.localserver import ServerThread, free_port
from umec.settings import Settings
from umec.webhook_process import build_webhook

pytestmark = requires_registry
CI = key()
GRANTS = "grants: [{namespaces: [openfaas-fn], scopes: [sensor.read, inference.classify]}]\n"


@contextlib.contextmanager
def function_site(tmp_path: Path) -> Iterator[Site]:
    """tests/support/revocation_site.running_site with grants for the functions' namespace."""
    cluster, port = ClusterIssuer(), free_port()
    tmp_path.mkdir()
    settings = site_settings(tmp_path, "", port, cluster)
    assert settings.token_grants is not None
    settings.token_grants.write_text(GRANTS)
    server = build_server(settings)
    engine, _ = open_database(settings.resolved_database_url())
    with ServerThread(server.app, port=port) as http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {server.operator_token}"}) as client:
        yield Site(server, http.url, engine, cluster, trusted_node([server], client))
    engine.dispose()


@dataclass
class Cluster:
    site: Site
    webhook: str
    kube: FakeKubeApi
    base: str          # the registry repository prefix of this test's functions

    def admit(self, path: str, obj: dict[str, Any], operation: str = "CREATE"
              ) -> dict[str, Any]:
        """One review as the API server sends it; the object after the patch, if allowed."""
        r = httpx.post(f"{self.webhook}{path}", timeout=30,
                       json=review(obj, uid=str(uuid.uuid4()), operation=operation))
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()["response"]
        if answer.get("patch"):
            answer["object"] = apply_json_patch(obj, json.loads(base64.b64decode(
                answer["patch"])))
        else:
            answer["object"] = obj
        return answer

    def deploy(self, deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """faas-netes creates the Deployment; its ReplicaSet the Pod: both through admission.
        Returns (the validate answer of the Pod, the Pod as stored)."""
        mutated = self.admit("/mutate", deployment)
        assert mutated["allowed"], mutated
        validated = self.admit("/validate", mutated["object"])
        assert validated["allowed"], validated
        pod = replicaset_pod(mutated["object"], uid=str(uuid.uuid4()))
        pod = self.admit("/mutate", pod)["object"]
        return self.admit("/validate", pod), pod

    def exchange(self, pod: dict[str, Any], audience: str) -> httpx.Response:
        """The function reads the token the kubelet projected for its pod and exchanges it."""
        meta = pod["metadata"]
        subject = self.site.cluster.token(
            namespace=meta["namespace"], account=pod["spec"]["serviceAccountName"],
            pod=meta["name"], pod_uid=meta["uid"], node="node-a", audience=(audience,))
        return httpx.post(f"{self.site.url}/oauth2/token", data={
            "grant_type": TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT,
            "subject_token": subject, "scope": "sensor.read"})


@pytest.fixture
def cluster(tmp_path: Path, registry: RunningRegistry) -> Iterator[Cluster]:
    base = f"{registry.host}/functions-{uuid.uuid4().hex[:6]}"
    with function_site(tmp_path / "site") as site, FakeKubeApi() as kube:
        # The functions' tenant policy, as an ImagePolicy object in openfaas-fn.
        kube.apply(IMAGE_POLICIES, policy_doc("functions", [f"{base}/**"],
                                              [authority("ci", {"ci": CI})],
                                              namespace=FUNCTION_NAMESPACE))
        settings = Settings(data_dir=tmp_path / "webhook", admission_policy_crds=True,
                            database_url=site.engine.url.render_as_string(hide_password=False),
                            kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"))
        app, deps = build_webhook(settings)
        with ServerThread(app) as http:
            kube.wait_for_watches(2)
            yield Cluster(site, http.url, kube, base)
        deps.records.engine.dispose()  # type: ignore[union-attr]


def figlet(image: str, **annotations: str) -> dict[str, Any]:
    """`faas-cli deploy` of a stack.yml function `figlet` (classic watchdog, fprocess)."""
    return faas_netes_deployment("figlet", image, env_process="figlet",
                                 annotations={ANNOTATION: INJECT, **annotations})


def push(cluster: Cluster, name: str, *signers: PrivateKey) -> str:
    ref = f"{cluster.base}/{name}:0.1.0"
    push_signed(ref, *signers)
    return ref


def test_a_signed_function_is_admitted_and_its_pods_get_tokens(cluster: Cluster) -> None:
    image = push(cluster, "figlet", CI)
    validated, pod = cluster.deploy(figlet(image))
    assert validated["allowed"], validated
    # The Deployment's template was pinned to the digest at /mutate; the pod inherits it.
    container = pod["spec"]["containers"][0]
    assert container["image"].startswith(f"{image}@sha256:")  # the tag stays for humans
    # The token volume was injected next to faas-netes' and the ServiceAccount plugin's.
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == VOLUME)
    audience = volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
    assert {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True} in \
        container["volumeMounts"]
    names = [v["name"] for v in pod["spec"]["volumes"]]
    assert names[0] == "temp" and names[1].startswith("kube-api-access-") and names[2] == VOLUME
    # The function exchanges its projected token: an access token for the APIs.
    r = cluster.exchange(pod, audience)
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    assert httpx.get(f"{cluster.site.url}/sensor/v1/tags",
                     headers={"Authorization": f"Bearer {access}"}).status_code == 200
    # The same pod's default (API server) token is no credential for the token service.
    assert cluster.exchange(pod, "https://kubernetes.default.svc.cluster.local"
                            ).status_code in (400, 401)


@pytest.mark.parametrize("attack", ["unsigned", "other-signer"])
def test_an_unverified_function_is_denied_and_gets_no_token(cluster: Cluster,
                                                            attack: str) -> None:
    image = push(cluster, "evil", *(() if attack == "unsigned" else (key(),)))
    deployment = figlet(image)
    mutated = cluster.admit("/mutate", deployment)
    denied = cluster.admit("/validate", mutated["object"])
    assert denied["allowed"] is False
    assert "spec.template.spec.containers[0]" in denied["status"]["message"]
    # Even if a pod of it were created some other way, nothing was recorded for it.
    pod = replicaset_pod(mutated["object"], uid=str(uuid.uuid4()))
    assert cluster.admit("/validate", cluster.admit("/mutate", pod)["object"])[
        "allowed"] is False
    refused = cluster.exchange(pod, "umec")
    assert refused.status_code == 400 and refused.json()["check"] == "admission.pod"


def test_a_function_without_the_annotation_gets_no_token_volume(cluster: Cluster) -> None:
    image = push(cluster, "plain", CI)
    deployment = faas_netes_deployment("plain", image, env_process="cat")
    validated, pod = cluster.deploy(deployment)
    assert validated["allowed"]
    assert all(v["name"] != VOLUME for v in pod["spec"]["volumes"])
