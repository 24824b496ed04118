"""The platform the sample app talks to, real and on loopback: ``umec server`` with the token
service, a camera reading a video of a real photo (scikit-image's coffee cup, label espresso)
and the real classifier; one simulated TPM node (node-a, trusted) and the admission record of
the app's pod. The cluster's service-account issuer is played by ``ClusterIssuer``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from admission.service.records import AdmittedImage, SqlAdmissionRecords
from mec_api.camera.config import CameraConfig
from tests.support.media import write_video
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from tests.support.tokens import D1, ClusterIssuer
from umec.app import build_server
from umec.db import open_database
from umec.localserver import ServerThread, free_port
from umec.settings import Settings
from umec_examples.classifier_app.config import AppConfig
from umec_examples.classifier_app.web import create_app

GRANTS = ("grants: [{namespaces: [tenant-*], scopes: [camera.snapshot, inference.classify, "
          "sensor.read]}]\n")
COFFEE = {"espresso", "cup", "coffee mug"}


@dataclass
class Site:
    url: str
    cluster: ClusterIssuer
    node: SimulatedNode
    work: Path

    def subject_token(self, name: str, pod: str, uid: str) -> Path:
        """A projected token file for a pod of tenant-a on node-a."""
        path = self.work / f"{name}.token"
        path.write_text(self.cluster.token(account="classifier-app", pod=pod, pod_uid=uid))
        return path

    def app_config(self, token_file: Path) -> AppConfig:
        return AppConfig(token_endpoint=f"{self.url}/oauth2/token", api_url=self.url,
                         subject_token_file=token_file, camera="site-cam")


def coffee_video(path: Path) -> Path:
    from skimage import data
    frame = cv2.cvtColor(np.asarray(data.coffee()), cv2.COLOR_RGB2BGR)
    return write_video(path, [frame] * 3)


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("classifier-site")
    cluster = ClusterIssuer()
    (work / "jwks.json").write_text(json.dumps(cluster.jwks()))
    (work / "policies").mkdir()
    (work / "policies" / "pi-k3s.yaml").write_text(k3s_policy("00" * 32))
    (work / "grants.yaml").write_text(GRANTS)
    cache = Path(os.environ.get("UMEC_TEST_MODEL_CACHE") or work / "models")
    port = free_port()
    settings = Settings(
        data_dir=work / "srv", policy_dir=work / "policies", default_node_class="pi-k3s",
        listen_port=port, public_url=f"http://127.0.0.1:{port}",
        token_sa_jwks_file=work / "jwks.json", token_grants=work / "grants.yaml",
        inference_enabled=True, model_cache_dir=cache,
        cameras=[CameraConfig(id="site-cam", kind="file",
                              location=str(coffee_video(work / "coffee.avi")))])
    server = build_server(settings)
    _, sessions = open_database(settings.resolved_database_url())
    SqlAdmissionRecords(sessions).record(
        namespace="tenant-a", name="classifier-app-1", uid="uid-classifier-1",
        images=[AdmittedImage("spec.containers[0]", f"reg/classifier-app@{D1}", D1, ("ci",))],
        verified=True, policy_generation="g1")
    with ServerThread(server.app, port=port) as http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {server.operator_token}"}) as client:
        node = SimulatedNode("node-a", client)
        server.attest.config.ek_allowlist = frozenset(
            {hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
        yield Site(http.url, cluster, node, work)


@pytest.fixture(autouse=True)
def fresh_node(request: pytest.FixtureRequest) -> None:
    """node-a attests before each test that uses the site: the site lives for the session,
    and other files' tests (under xdist, on the same worker) can take longer than the
    attestation interval, after which node-a is stale and gets no token."""
    if "site" in request.fixturenames:
        site: Site = request.getfixturevalue("site")
        assert site.node.attest()["state"] == "trusted"


@dataclass
class RunningApp:
    url: str
    app: object

    @property
    def held_token(self) -> str | None:
        return self.app.state.platform.held_token  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="session")
def admitted_app(site: Site) -> Iterator[RunningApp]:
    """The app as the admitted pod classifier-app-1 runs it."""
    token = site.subject_token("admitted", "classifier-app-1", "uid-classifier-1")
    app = create_app(site.app_config(token))
    with ServerThread(app) as http:
        yield RunningApp(http.url, app)


@pytest.fixture(scope="session")
def refused_app(site: Site) -> Iterator[RunningApp]:
    """The app as a pod the webhook never admitted: its token exchange is refused."""
    token = site.subject_token("unadmitted", "rogue-app-1", "uid-rogue-1")
    app = create_app(site.app_config(token))
    with ServerThread(app) as http:
        yield RunningApp(http.url, app)
