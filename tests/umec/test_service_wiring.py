"""kernel.service: how ``umec`` runs a domain's Service (start, background, close), and the
wiring ``umec server`` gets from the domains' ``build_service`` (issue 11)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient

from kernel.service import Service, running
from tests.support.fake_kube import FakeKube
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from umec.app import build_server
from umec.localserver import ServerThread
from umec.settings import Settings


def test_running_starts_in_order_runs_background_and_closes_in_reverse() -> None:
    events: list[str] = []

    def service(name: str) -> Service[None]:
        async def start() -> None:
            events.append(f"start {name}")

        async def close() -> None:
            events.append(f"close {name}")

        async def job() -> None:
            events.append(f"job {name}")
            await asyncio.Event().wait()   # runs until cancelled
        return Service(name, None, background=[job], on_start=[start], on_close=[close])

    async def main() -> None:
        async with running([service("a"), service("b")]):
            await asyncio.sleep(0.05)
            assert events[:2] == ["start a", "start b"]     # every start before any job
            assert sorted(events[2:]) == ["job a", "job b"]
        assert events[-2:] == ["close b", "close a"]

    asyncio.run(main())


def test_a_failing_close_hook_is_logged_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []

    async def broken() -> None:
        raise OSError("socket already gone")

    async def fine() -> None:
        closed.append("fine")

    async def main() -> None:
        async with running([Service("s", None, on_close=[broken, fine])]):
            pass

    with caplog.at_level(logging.WARNING, logger="umec.service"):
        asyncio.run(main())
    assert closed == ["fine"]
    assert "closing s failed: OSError: socket already gone" in caplog.text


def test_install_puts_state_hooks_and_routers_on_the_app() -> None:
    router = APIRouter()

    @router.get("/thing")
    def thing(request: Request) -> dict[str, str]:
        return {"thing": request.app.state.thing, "hooked": request.app.state.hooked}

    def hook(app: FastAPI) -> None:
        app.state.hooked = "yes"

    app = FastAPI()
    Service("s", None, routers=[router], state={"thing": "here"}, on_install=[hook]).install(app)
    assert TestClient(app).get("/thing").json() == {"thing": "here", "hooked": "yes"}


def test_umec_server_resyncs_kubernetes_labels_on_its_own(tmp_path: Path) -> None:
    """With ``UMEC_KUBERNETES_LABELS`` the attestation service runs the label re-sync (here
    every 0.3 s): a label someone removed by hand comes back without a state change."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi.yaml").write_text(k3s_policy("00" * 32))
    with FakeKube() as kube:
        kube.add_node("node-a")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                            default_node_class="pi-k3s", kubernetes_labels=True,
                            kubeconfig=kubeconfig, kubernetes_resync_seconds=0.3)
        server = build_server(settings)
        with ServerThread(server.app) as http, httpx.Client(base_url=http.url) as client:
            node = SimulatedNode("node-a", client)
            server.attest.config.ek_allowlist = frozenset(
                {hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
            node.enroll_and_activate()
            assert node.attest()["state"] == "trusted"
            _wait_for_label(kube, "the change's notification never labelled the node")
            with kube._lock:  # the notification has landed; nothing else will label it now
                kube.nodes["node-a"]["metadata"]["labels"].pop("umec.io/attested")
            _wait_for_label(kube, "the server never re-synced the labels")


def _wait_for_label(kube: FakeKube, why: str) -> None:
    deadline = time.monotonic() + 10
    while kube.node("node-a")["metadata"]["labels"].get("umec.io/attested") != "true":
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def test_the_mec011_service_sweeps_liveness_in_the_background(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resource APIs' background: MEC 011's liveness sweep runs every
    ``liveness_sweep_seconds`` on the service's own state and transport URI."""
    from sqlalchemy import create_engine

    import mec_api.service.apis as apis
    from mec_api.mec011 import Mec011Base
    swept: list[tuple[object, str]] = []

    async def sweep(state: object, public_url: str) -> int:
        swept.append((state, public_url))
        return 0
    monkeypatch.setattr(apis, "sweep_liveness", sweep)
    engine = create_engine(f"sqlite:///{tmp_path / 'mec011.db'}")
    Mec011Base.metadata.create_all(engine)
    service: Service[None] = Service("mec_api", None)
    apis.add_resource_apis(service, apis.ApisConfig(
        which=("mec011",), public_url="https://umec.example",
        token_endpoint="https://umec.example/oauth2/token",
        mec011=apis.Mec011Config(liveness_sweep_seconds=0.05)), engine)

    async def main() -> None:
        async with running([service]):
            await asyncio.sleep(0.3)
    asyncio.run(main())
    assert len(swept) >= 2
    assert {url for _, url in swept} == {"https://umec.example"}
    assert all(state is service.state["mec011"] for state, _ in swept)
    engine.dispose()
