"""deploy/examples/classifier-app.yaml holds what a tenant app needs (kubernetes-validate of
every example is in tests/umec/test_deploy.py): a namespace the webhook verifies under the
restricted Pod Security profile, the projected token with the token service's audience and
no Kubernetes API token, resources, and a Service that selects the pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.umec.test_deploy import restricted_violations

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "classifier-app.yaml"


def docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def test_namespace_is_verified_and_restricted() -> None:
    labels = docs()["Namespace"]["metadata"]["labels"]
    assert labels["umec.io/verify"] == "enabled"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pod_is_restricted_with_the_umec_token_only() -> None:
    found = docs()
    deployment = found["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    assert found["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == found["ServiceAccount"]["metadata"]["name"]
    (app,) = pod["containers"]
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert set(app["resources"]["requests"]) == set(app["resources"]["limits"]) == {
        "cpu", "memory"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (source,) = volumes["umec-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "umec"  # the token service's audience
    assert source["serviceAccountToken"]["expirationSeconds"] <= 3600
    env = {e["name"]: e["value"] for e in app["env"]}
    mount = next(m for m in app["volumeMounts"] if m["name"] == "umec-token")
    path = source["serviceAccountToken"]["path"]
    assert env["UMEC_SUBJECT_TOKEN_FILE"] == f"{mount['mountPath']}/{path}"
    endpoint = env["UMEC_TOKEN_ENDPOINT"]
    assert endpoint.startswith("https://") and endpoint.endswith("/oauth2/token")
    assert "command" not in app and "args" not in app  # the image's entrypoint runs the app
    assert app["image"].rsplit("/", 1)[1].split(":")[0] == "umec-classifier-app"
    assert "@sha256:" not in app["image"]  # a tag; the webhook pins the signed digest


def test_service_selects_the_pod_and_everything_is_in_the_tenant_namespace() -> None:
    found = docs()
    deployment, service = found["Deployment"], found["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = service["spec"]["ports"][0]["targetPort"]
    assert port in {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]
                    ["ports"]}
    namespace = found["Namespace"]["metadata"]["name"]
    assert {d["metadata"].get("namespace", namespace) for d in found.values()} == {namespace}
