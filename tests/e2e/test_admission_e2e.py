"""Admission end to end with the real parts: docker-registry, `umec sign`/`umec verify` as
processes, and the webhook as `umec webhook` wires it (real registry client, cosign verifier,
policies from files, SQL record), over real TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from admission.registry.client import RegistryClient
from admission.service.images import CosignVerifier, RegistryClients
from admission.service.records import SqlAdmissionRecords
from keys import generate_private_key, public_key_pem, save_private_key
from tests.support.oci_images import push_image
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.webhook import pod_spec, policy_doc, review, serve_tls, workload
from umec.db import open_database
from umec.settings import Settings
from umec.webhook_process import build_webhook

pytestmark = requires_registry
UMEC = [sys.executable, "-m", "umec"]


def push(registry: RunningRegistry, name: str) -> str:
    async def go() -> str:
        async with RegistryClient() as client:
            return await push_image(client, name, salt=name)
    return asyncio.run(go())


def umec(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "250", **(env or {})}
    return subprocess.run([*UMEC, *args], capture_output=True, text=True, timeout=120,
                          env=full_env, check=False)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    for name in ("ci", "other"):
        key = generate_private_key()
        save_private_key(tmp_path / f"{name}.key", key)
        (tmp_path / f"{name}.pub").write_bytes(public_key_pem(key))
    return tmp_path


def test_sign_and_verify_commands(registry: RunningRegistry, keys_dir: Path) -> None:
    base = f"{registry.host}/e2e-{uuid.uuid4().hex[:8]}"
    push(registry, f"{base}/app:1.0")
    push(registry, f"{base}/unsigned:1.0")
    signed = umec(["sign", f"{base}/app:1.0", "--key", str(keys_dir / "ci.key")])
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert "signed sha256:" in signed.stdout

    ok = umec(["verify", f"{base}/app:1.0", "--key", str(keys_dir / "ci.pub")])
    assert ok.returncode == 0, ok.stdout
    assert "verified" in ok.stdout and str(keys_dir / "ci.pub") in ok.stdout
    wrong_key = umec(["verify", f"{base}/app:1.0", "--key", str(keys_dir / "other.pub")])
    assert wrong_key.returncode == 1 and "policy not met" in wrong_key.stdout
    two = umec(["verify", f"{base}/app:1.0", "--key", str(keys_dir / "ci.pub"),
                "--key", str(keys_dir / "other.pub"), "--threshold", "2"])
    assert two.returncode == 1
    unsigned = umec(["verify", f"{base}/unsigned:1.0", "--key", str(keys_dir / "ci.pub")])
    assert unsigned.returncode == 1 and "policy not met" in unsigned.stdout
    missing = umec(["sign", f"{base}/nothing:1.0", "--key", str(keys_dir / "ci.key")])
    assert missing.returncode == 1 and "Traceback" not in missing.stdout + missing.stderr


def post(url: str, ca: Path, path: str, body: dict[str, Any]) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=ctx, timeout=30) as client:
        resp = client.post(url + path, json=body)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()["response"]
    return answer


def test_webhook_with_real_registry_and_signatures(tmp_path: Path, registry: RunningRegistry,
                                                   keys_dir: Path) -> None:
    base = f"{registry.host}/wh-{uuid.uuid4().hex[:8]}"
    push(registry, f"{base}/app:1.0")
    push(registry, f"{base}/sidecar:1.0")
    assert umec(["sign", f"{base}/app:1.0", "--key", str(keys_dir / "ci.key")]).returncode == 0
    policies = tmp_path / "policies"
    policies.mkdir()
    doc = policy_doc("ci-signed", [f"{base}/**"], [{
        "name": "ci", "threshold": 1,
        "keys": [{"name": "ci", "pem": (keys_dir / "ci.pub").read_text()}]}])
    (policies / "ci.yaml").write_text(yaml.safe_dump(doc))
    settings = Settings(data_dir=tmp_path / "srv", admission_policy_dir=policies)
    app, _ = build_webhook(settings)

    with serve_tls(app, tmp_path / "certs") as (url, ca):
        # /mutate pins the tag to the digest the registry serves.
        pod = workload("Pod", pod_spec([f"{base}/app:1.0"]), uid="pod-1")
        mutated = post(url, ca, "/mutate", review(pod))
        patch = json.loads(base64.b64decode(mutated["patch"]))
        pinned = next(op["value"] for op in patch if op["op"] == "replace")
        assert pinned.startswith(f"{base}/app@sha256:") or "@sha256:" in pinned

        # /validate admits the pinned, signed pod and records it.
        pod = workload("Pod", pod_spec([pinned]), uid="pod-1")
        admitted = post(url, ca, "/validate", review(pod))
        assert admitted["allowed"] is True, admitted
        record = SqlAdmissionRecords(open_database(settings.resolved_database_url())[1])
        got = record.lookup("pod-1")
        assert got is not None and got.verified and got.images[0].digest == pinned.split("@")[1]

        # An unsigned sidecar in the same pod is denied, naming the container and the step.
        sidecar_digest = asyncio.run(_resolve(f"{base}/sidecar:1.0"))
        pod = workload("Pod", pod_spec([pinned, f"{base}/sidecar@{sidecar_digest}"]),
                       uid="pod-2")
        denied = post(url, ca, "/validate", review(pod, uid="req-2"))
        assert denied["allowed"] is False
        assert "containers[1]" in denied["status"]["message"]
        assert record.lookup("pod-2") is None

        # By tag at /validate: denied.
        by_tag = post(url, ca, "/validate", review(workload(
            "Pod", pod_spec([f"{base}/app:1.0"]), uid="pod-3"), uid="req-3"))
        assert by_tag["allowed"] is False


async def _resolve(image: str) -> str:
    from admission.core.reference import parse_reference
    async with RegistryClient() as client:
        return (await client.resolve(parse_reference(image))).digest


def test_webhook_denies_when_registry_is_down(tmp_path: Path, keys_dir: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "all.yaml").write_text(yaml.safe_dump(policy_doc("all", ["**"], [{
        "name": "ci", "threshold": 1,
        "keys": [{"name": "ci", "pem": (keys_dir / "ci.pub").read_text()}]}])))
    settings = Settings(data_dir=tmp_path / "srv", admission_policy_dir=policies,
                        webhook_timeout_seconds=3, registry_timeout_seconds=1)
    app, _ = build_webhook(settings)
    from umec.localserver import free_port
    gone = f"127.0.0.1:{free_port()}/app@sha256:{'a' * 64}"
    with serve_tls(app, tmp_path / "certs") as (url, ca):
        answer = post(url, ca, "/validate", review(workload("Pod", pod_spec([gone]),
                                                            uid="pod-x")))
    assert answer["allowed"] is False


def test_tenant_key_never_admits_into_another_tenant(tmp_path: Path, registry: RunningRegistry,
                                                     keys_dir: Path) -> None:
    base = f"{registry.host}/tenants-{uuid.uuid4().hex[:8]}"
    push(registry, f"{base}/shared:1.0")
    assert umec(["sign", f"{base}/shared:1.0", "--key", str(keys_dir / "ci.key")]).returncode == 0
    policies = tmp_path / "policies"
    policies.mkdir()
    for tenant, pub in (("tenant-a", "ci.pub"), ("tenant-b", "other.pub")):
        (policies / f"{tenant}.yaml").write_text(yaml.safe_dump(policy_doc(
            f"{tenant}-images", [f"{base}/**"], [{
                "name": tenant, "threshold": 1,
                "keys": [{"name": tenant, "pem": (keys_dir / pub).read_text()}]}],
            namespace=tenant)))
    app, _ = build_webhook(Settings(data_dir=tmp_path / "srv", admission_policy_dir=policies))
    digest = asyncio.run(_resolve(f"{base}/shared:1.0"))
    image = f"{base}/shared@{digest}"
    with serve_tls(app, tmp_path / "certs") as (url, ca):
        in_a = post(url, ca, "/validate", review(workload(
            "Pod", pod_spec([image]), namespace="tenant-a", uid="a-1"), uid="ra"))
        in_b = post(url, ca, "/validate", review(workload(
            "Pod", pod_spec([image]), namespace="tenant-b", uid="b-1"), uid="rb"))
    assert in_a["allowed"] is True
    assert in_b["allowed"] is False and "tenant-b" in in_b["status"]["message"]


def test_webhook_command_serves_tls(tmp_path: Path) -> None:
    import time

    from umec.localserver import free_port
    certs = umec(["webhook", "certs", "--dir", str(tmp_path / "certs"),
                  "--service", "umec-webhook", "--namespace", "umec-system"])
    assert certs.returncode == 0
    ca_bundle = certs.stdout.strip().splitlines()[-1]
    assert base64.b64decode(ca_bundle).startswith(b"-----BEGIN CERTIFICATE-----")
    port = free_port()
    env = {**os.environ, "UMEC_DATA_DIR": str(tmp_path / "data"),
           "UMEC_WEBHOOK_TLS_CERT": str(tmp_path / "certs" / "tls.crt"),
           "UMEC_WEBHOOK_TLS_KEY": str(tmp_path / "certs" / "tls.key"),
           "UMEC_WEBHOOK_CLIENT_CA": str(tmp_path / "certs" / "client-ca.crt"),
           "UMEC_WEBHOOK_PORT": str(port)}
    proc = subprocess.Popen([*UMEC, "webhook", "--host", "127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def tls(client_cert: bool) -> ssl.SSLContext:
        # The certificate names the Service, not 127.0.0.1: check the chain only.
        ctx = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.crt"))
        ctx.check_hostname = False
        if client_cert:  # the API server's, from the same `umec webhook certs`
            ctx.load_cert_chain(str(tmp_path / "certs" / "apiserver-client.crt"),
                                str(tmp_path / "certs" / "apiserver-client.key"))
        return ctx
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"https://127.0.0.1:{port}/healthz",
                             verify=tls(True)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # a client without our CA is refused
            httpx.get(f"https://127.0.0.1:{port}/healthz")
        with pytest.raises(httpx.TransportError):  # and one without the client certificate
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=tls(False))
    finally:
        proc.terminate()
        proc.wait(10)


def test_verifier_looks_at_bundles_only_when_legacy_signatures_do_not_cover_every_key(
        registry: RunningRegistry, keys_dir: Path) -> None:
    from admission.core.keys_cosign import load_verification_key
    from admission.registry.client import RegistryClient
    base = f"{registry.host}/bundles-{uuid.uuid4().hex[:8]}"
    push(registry, f"{base}/app:1.0")
    assert umec(["sign", f"{base}/app:1.0", "--key", str(keys_dir / "ci.key"),
                 "--bundle"]).returncode == 0
    digest = asyncio.run(_resolve(f"{base}/app:1.0"))
    ci = load_verification_key((keys_dir / "ci.pub").read_bytes())
    other = load_verification_key((keys_dir / "other.pub").read_bytes())

    async def verify(keys: dict[str, Any]) -> tuple[set[tuple[str, str]], int]:
        async with RegistryClient() as client:
            before = client.requests_sent
            verifier = CosignVerifier(RegistryClients(client))
            signers = await verifier.verify(f"{base}/app@{digest}", keys)
            return {(s.key_id, s.kind) for s in signers}, client.requests_sent - before
    only_ci, requests_ci = asyncio.run(verify({"ci": ci}))
    assert only_ci == {("ci", "legacy")}
    both, requests_both = asyncio.run(verify({"ci": ci, "other": other}))
    assert both == {("ci", "legacy"), ("ci", "bundle")}  # "other" signed nothing
    assert requests_both > requests_ci  # the bundle lookup happened only in the second case
