"""The k3s manifests validate offline against the Kubernetes schemas (kubernetes-validate) of
every supported Kubernetes version (1.29 to 1.33), and hold what the cluster needs: Pod Security
per namespace (restricted where nothing needs more, the pods there pass the profile), the agent
only on TPM nodes with probes and node-critical priority, NetworkPolicies, the servers'
disruption budgets and anti-affinity, and RBAC no wider than the code uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted([p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"]
                   + list(DEPLOY.glob("examples/*.yaml")))


KUBERNETES_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS if p.parent == DEPLOY}  # examples are not


def test_agent_tolerates_untrusted_taint_and_server_can_patch_nodes() -> None:
    ds = next(d for d in yaml.safe_load_all((DEPLOY / "agent-daemonset.yaml").read_text())
              if d["kind"] == "DaemonSet")
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


# --- what the cluster needs ---------------------------------------------------------------------

def applied() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k deploy/` creates."""
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    return [d for name in listed for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in applied() if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_templates() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(namespace, workload name, pod spec) of every workload."""
    for doc in applied():
        spec = doc.get("spec") or {}
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield doc["metadata"]["namespace"], doc["metadata"]["name"], \
                spec["template"]["spec"]


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" (v1.29) checks for one pod spec."""
    out = [f"host namespace {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    out += [f"volume {v['name']}: {sorted(set(v) - {'name'})}" for v in pod.get("volumes", [])
            if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    pod_sc = pod.get("securityContext") or {}
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        merged = {**pod_sc, **sc}
        where = c["name"]
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") == 0:
            out.append(f"{where}: must run as non-root")
        if (merged.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault",
                                                                    "Localhost"):
            out.append(f"{where}: seccompProfile RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{where}: capabilities must drop ALL")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{where}: hostPort")
    return out


def test_pod_security_per_namespace() -> None:
    """umec-system enforces restricted and every pod there passes it; the agent, which needs
    the host's TPM, has a namespace of its own that is privileged, and nothing else runs
    there."""
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in applied()
              if d["kind"] == "Namespace"}
    assert labels["umec-system"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["umec-agent"]["pod-security.kubernetes.io/enforce"] == "privileged"
    workloads = list(pod_templates())
    assert {(ns, name) for ns, name, _ in workloads} == {
        ("umec-system", "umec-server"), ("umec-system", "umec-webhook"),
        ("umec-system", "umec-webhook-certs"), ("umec-agent", "umec-agent")}
    for ns, name, pod in workloads:
        if ns == "umec-system":
            assert restricted_violations(pod) == [], name
    agent = next(pod for ns, _, pod in workloads if ns == "umec-agent")
    assert restricted_violations(agent)   # the checker does see a privileged pod


def test_agent_runs_only_on_tpm_nodes_as_node_critical_with_probes() -> None:
    ds = find("DaemonSet", "umec-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"umec.io/tpm": "present"}
    assert pod["priorityClassName"] == "system-node-critical"
    agent = pod["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert agent[probe]["exec"]["command"][0] == "/usr/bin/python3.11"
    assert "enrolled.json" in " ".join(agent["readinessProbe"]["exec"]["command"])
    assert agent["securityContext"]["runAsUser"] == 0   # the image's user cannot open the TPM
    quota = find("ResourceQuota", "umec-agent-critical-pods")
    assert quota["metadata"]["namespace"] == ds["metadata"]["namespace"] == "umec-agent"
    assert quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"] == [
        "system-node-critical"]
    sa = next(d for d in applied() if d["kind"] == "ServiceAccount"
              and d["metadata"]["name"] == "umec-agent")
    assert sa["metadata"]["namespace"] == "umec-agent"


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def test_network_policies_let_in_only_the_served_ports() -> None:
    policies = [d for d in applied() if d["kind"] == "NetworkPolicy"]
    for ns in ("umec-system", "umec-agent"):
        assert any(p["metadata"]["namespace"] == ns and p["spec"]["podSelector"] == {}
                   and p["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in p["spec"]
                   for p in policies), f"no default deny in {ns}"
    for name in ("umec-server", "umec-webhook"):
        deployment = find("Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        ports = {p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        allowing = [p for p in policies if p["metadata"]["namespace"] == "umec-system"
                    and p["spec"]["podSelector"] and _selects(p, labels)]
        assert allowing, name
        opened = {port["port"] for p in allowing for rule in p["spec"]["ingress"]
                  for port in rule["ports"]}
        assert opened == ports, name


@pytest.mark.parametrize("name", ["umec-server", "umec-webhook"])
def test_servers_survive_a_drain_and_spread_over_nodes(name: str) -> None:
    deployment = find("Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find("PodDisruptionBudget", name)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    term = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()


def _role_rules(kind: str, name: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = find(kind, name)["rules"]
    return rules


def test_webhook_may_watch_the_policy_crds_and_nothing_more() -> None:
    crds = {d["spec"]["names"]["plural"] for d in applied()
            if d["kind"] == "CustomResourceDefinition"}
    assert _role_rules("ClusterRole", "umec-webhook-policies") == [
        {"apiGroups": ["umec.io"], "resources": sorted(crds, reverse=True),
         "verbs": ["get", "list", "watch"]}]
    binding = find("ClusterRoleBinding", "umec-webhook-policies")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "umec-webhook",
                                    "namespace": "umec-system"}]
    webhook = find("Deployment", "umec-webhook")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in webhook["containers"][0]["env"]}
    assert env["UMEC_ADMISSION_POLICY_CRDS"] == "true"


def test_certificate_job_touches_only_the_named_objects() -> None:
    """The rotation job's rights are all resourceName-scoped: the two Secrets (the CA read
    only), the webhook Service's Endpoints (read only: it checks what the replicas serve; it
    restarts nothing) and the two webhook configurations."""
    rules = (_role_rules("Role", "umec-webhook-certs")
             + _role_rules("ClusterRole", "umec-webhook-certs"))
    assert all(r.get("resourceNames") for r in rules)
    assert not any(set(r["verbs"]) - {"get", "patch"} for r in rules)
    ca = next(r for r in rules if r.get("resourceNames") == ["umec-webhook-ca"])
    assert ca["verbs"] == ["get"]
    assert {"apiGroups": [""], "resources": ["endpoints"], "resourceNames": ["umec-webhook"],
            "verbs": ["get"]} in rules
    assert not any(r["apiGroups"] == ["apps"] for r in rules)
    hooks = {d["metadata"]["name"] for d in applied() if d["kind"].endswith(
        "WebhookConfiguration")}
    named = {n for r in rules if r["apiGroups"] == ["admissionregistration.k8s.io"]
             for n in r["resourceNames"]}
    assert named == hooks
    job = find("CronJob", "umec-webhook-certs")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    args = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["webhook", "certs", "--rotate"]


def test_no_ca_bundle_in_the_manifests() -> None:
    """The job writes caBundle; a manifest carrying one would reset it on every apply."""
    for doc in applied():
        for hook in doc.get("webhooks", []):
            assert "caBundle" not in hook["clientConfig"], hook["name"]


def test_database_connections_fit_postgresql_defaults() -> None:
    """Every replica that opens the database holds up to its own pool: their sum must stay
    within PostgreSQL's default max_connections (100, 3 reserved for superusers). At 30 per
    process, the 2 server and 2 webhook replicas could ask for 120."""
    from umec.settings import Settings
    default = Settings.model_fields["database_max_connections"].default
    total = 0
    for deployment in (d for d in applied() if d["kind"] == "Deployment"):
        containers = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for c in containers for e in c.get("env", [])}
        if "UMEC_DATABASE_URL" in env:
            each = int(env.get("UMEC_DATABASE_MAX_CONNECTIONS", {}).get("value", default))
            total += deployment["spec"].get("replicas", 1) * each
    assert 0 < total <= 97, total
