"""The k3s manifests validate offline against the Kubernetes schemas (kubernetes-validate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted([p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"]
                   + list(DEPLOY.glob("examples/*.yaml")))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS if p.parent == DEPLOY}  # examples are not


def test_agent_tolerates_untrusted_taint_and_server_can_patch_nodes() -> None:
    ds = yaml.safe_load((DEPLOY / "agent-daemonset.yaml").read_text())
    tolerations = ds["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "umec.io/untrusted", "operator": "Exists", "effect": "NoExecute"} in tolerations
    rules = next(d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
                 if d["kind"] == "ClusterRole")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
                     {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]


def test_pod_deletion_webhook_never_blocks_a_deletion() -> None:
    """Pod DELETE reviews go to /validate through an entry of their own that ignores failures
    (a webhook that is down must never block a deletion); the image entries still fail
    closed and never see DELETE."""
    config = next(d for d in yaml.safe_load_all((DEPLOY / "webhook.yaml").read_text())
                  if d["kind"] == "ValidatingWebhookConfiguration")
    hooks = {h["name"]: h for h in config["webhooks"]}
    forget = hooks["forget.pods.umec.io"]
    assert forget["failurePolicy"] == "Ignore" and forget["timeoutSeconds"] <= 5
    assert forget["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                                "operations": ["DELETE"], "resources": ["pods"]}]
    assert forget["clientConfig"]["service"]["path"] == "/validate"
    verify = hooks["verify.images.umec.io"]
    assert verify["failurePolicy"] == "Fail"
    assert all("DELETE" not in r["operations"] for r in verify["rules"])
