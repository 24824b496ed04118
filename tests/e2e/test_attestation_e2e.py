"""Attestations end to end as CI and the cluster run them: `umec keys generate`, `umec sign`,
`umec sbom`, `umec provenance` and `umec attest` as processes against docker-registry, then the
webhook as `umec webhook` assembles it (policy directory with spec.attestations, real registry
client, SQL records) over real TLS: the attested image is admitted, the one attested only with
an SBOM is denied, its provenance named (attestation.predicate: only another type verified)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from admission.registry.client import RegistryClient
from tests.support.oci_images import push_image
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.webhook import pod_spec, policy_doc, review, serve_tls, workload
from umec.settings import Settings
from umec.webhook_process import build_webhook

pytestmark = requires_registry
BUILDER = "https://github.com/acme/umec/.github/workflows/image.yml@refs/heads/main"


def umec(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UMEC_", "GITHUB_"))}
    env.update({"COLUMNS": "250", "COSIGN_PASSWORD": "ci-secret", "SOURCE_DATE_EPOCH": "0",
                "UMEC_DATA_DIR": str(tmp_path / "cli")})
    done = subprocess.run([sys.executable, "-m", "umec", *args], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_ci_attests_and_the_webhook_requires_it(tmp_path: Path,
                                               registry: RunningRegistry) -> None:
    base = f"{registry.host}/e2e-att-{uuid.uuid4().hex[:8]}"

    async def push() -> dict[str, str]:
        async with RegistryClient() as client:
            return {n: await push_image(client, f"{base}/{n}:1.0", salt=n)
                    for n in ("app", "sbom-only")}
    digests = asyncio.run(push())
    prefix = tmp_path / "ci"
    umec(["keys", "generate", "--output-key-prefix", str(prefix)], tmp_path)
    rootfs = tmp_path / "rootfs" / "var" / "lib" / "dpkg"
    rootfs.mkdir(parents=True)
    (rootfs / "status").write_text("Package: tpm2-tools\nStatus: install ok installed\n"
                                   "Version: 5.4-1\nArchitecture: arm64\n")
    sbom = umec(["sbom", str(tmp_path / "rootfs"), "--format", "cyclonedx"], tmp_path).stdout
    (tmp_path / "sbom.json").write_text(sbom)
    provenance = umec(["provenance", "--builder-id", BUILDER, "--source-repo",
                       "https://github.com/acme/umec", "--commit", "c0ffee"], tmp_path).stdout
    (tmp_path / "provenance.json").write_text(provenance)
    for name in ("app", "sbom-only"):
        image = f"{base}/{name}:1.0"
        umec(["sign", image, "--key", f"{prefix}.key"], tmp_path)
        umec(["attest", image, "--key", f"{prefix}.key", "--type", "cyclonedx", "--predicate",
              str(tmp_path / "sbom.json")], tmp_path)
    umec(["attest", f"{base}/app:1.0", "--key", f"{prefix}.key", "--type", "slsaprovenance1",
          "--predicate", str(tmp_path / "provenance.json")], tmp_path)

    pem = Path(f"{prefix}.pub").read_text()
    doc = policy_doc("attested", [f"{base}/**"],
                     [{"name": "ci", "keys": [{"name": "ci", "pem": pem}]}])
    doc["spec"]["attestations"] = [
        {"name": "provenance", "predicateType": "slsaprovenance1",
         "keys": [{"name": "ci", "pem": pem}], "conditions": {"builderId": BUILDER}},
        {"name": "sbom", "predicateType": "sbom", "keys": [{"name": "ci", "pem": pem}]}]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "attested.yaml").write_text(yaml.safe_dump(doc))
    app, _ = build_webhook(Settings(data_dir=tmp_path / "srv", admission_policy_dir=policies))

    def validate(client: httpx.Client, name: str) -> dict[str, Any]:
        pod = workload("Pod", pod_spec([f"{base}/{name}@{digests[name]}"]), uid=name)
        answer = client.post("/validate", content=json.dumps(review(pod, uid=name)),
                             headers={"content-type": "application/json"})
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["response"])

    with serve_tls(app, tmp_path / "certs") as (url, ca), \
            httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca)),
                         timeout=30) as client:
        assert validate(client, "app")["allowed"] is True
        denied = validate(client, "sbom-only")
        assert denied["allowed"] is False
        message = denied["status"]["message"]
        assert ": attestation.predicate: ClusterImagePolicy/attested: attestation provenance: " \
            "the attestations signed by ci are of type https://cyclonedx.org/bom, not " \
            "slsaprovenance1" in message
        assert "attestation sbom" not in message
