"""docs/install.md, run: every ``# workstation`` block in order, against the fake Kubernetes API.

``umec`` commands run as processes. ``kubectl`` is not installed here, so its part is played by
:class:`Kubectl` for exactly the forms the guide uses (``apply -k``, ``apply -f``, ``create
namespace``, ``label``, ``create rolebinding``, ``create job --from=cronjob/…``): every object
applied is validated with kubernetes-validate for Kubernetes 1.29–1.33 (policy objects with
the webhook's own parser) and stored in the fake API server, and the job created from the
certificate CronJob runs that CronJob's own command (``umec webhook certs --rotate``) against
it. Then the cluster is checked: every Secret and ConfigMap the workloads mount or read exists
in their namespace, the caBundles are the rendered CA's, the TPM node and the tenant namespace
carry the labels the DaemonSet and the webhook select on, the tenant's ImagePolicy is in force,
and the rendered keys load as the server's non-root user from Secret volumes laid out as the
kubelet lays them out. ``# on the Pi`` and ``# in the cluster`` blocks are listed, not run."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from admission.core.policy import parse_policy
from admission.service.certs import create_webhook_certs
from admission.service.policy_watch import RESOURCES, PolicyState
from tests.support.fake_kube_api import (
    CONFIGMAPS,
    DEPLOYMENTS,
    IMAGE_POLICIES,
    MUTATING_WEBHOOKS,
    NAMESPACES,
    SECRETS,
    STANDARD,
    VALIDATING_WEBHOOKS,
    FakeKubeApi,
    Resource,
)
from tests.support.kubelet import PYTHON, load_as, pod_volumes

kubernetes_validate = pytest.importorskip("kubernetes_validate")
REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "install.md"
VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]
CRONJOBS = Resource("batch", "v1", "cronjobs", "CronJob", True)
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet", True)
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True)
STORED = {r.kind: r for r in (*STANDARD, CRONJOBS, DAEMONSETS, ROLEBINDINGS)}


def blocks() -> list[tuple[str, list[str]]]:
    """(where, command lines) of every ```sh block: where is its first line's comment."""
    out = []
    for body in re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S):
        lines = [line for line in body.splitlines() if line.strip()]
        out.append((lines[0].lstrip("# ").strip(), lines[1:]))
    return out


@dataclass
class Kubectl:
    """The forms of kubectl the guide uses, against the fake API (module doc)."""

    kube: FakeKubeApi
    cwd: Path
    env: dict[str, str]
    validated: list[str] = field(default_factory=list)

    def __call__(self, args: list[str]) -> None:
        namespace = None
        if args[0] == "-n":
            namespace, args = args[1], args[2:]
        verb = args[:2]
        if verb == ["apply", "-k"]:
            kustomization = yaml.safe_load((self.cwd / args[2] / "kustomization.yaml").read_text())
            for name in kustomization["resources"]:
                self.apply_file(self.cwd / args[2] / name)
        elif verb == ["apply", "-f"]:
            self.apply_file(self.cwd / args[2])
        elif verb == ["create", "namespace"]:
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args[2]}})
        elif args[0] == "label":
            self.label(args[1], args[2], args[3:])
        elif verb == ["create", "rolebinding"]:
            self.rolebinding(namespace or "default", args[2], args[3:])
        elif verb == ["create", "job"]:
            self.job_from_cronjob(namespace or "default", args[2])
        else:
            raise AssertionError(f"kubectl {' '.join(args)}: not a form this test plays")

    def apply_file(self, path: Path) -> None:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                self.apply(doc)

    def apply(self, doc: dict[str, Any]) -> None:
        if doc["apiVersion"].startswith("umec.io/"):
            parse_policy(doc)           # the CRD's kinds: the webhook's own parser
        else:
            for version in VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
        self.validated.append(f"{doc['kind']}/{doc['metadata']['name']}")
        resource = STORED.get(doc["kind"])
        if resource is not None:
            self.kube.apply(resource, doc)

    def label(self, kind: str, name: str, pairs: list[str]) -> None:
        labels = dict(p.split("=", 1) for p in pairs)
        if kind == "node":
            self.kube.core_v1().patch_node(name, {"metadata": {"labels": labels}})
            return
        assert kind == "namespace", kind
        obj = self.kube.get(NAMESPACES, name)
        obj["metadata"].setdefault("labels", {}).update(labels)
        self.kube.apply(NAMESPACES, obj)

    def rolebinding(self, namespace: str, name: str, flags: list[str]) -> None:
        opts = dict(f.lstrip("-").split("=", 1) for f in flags)
        sa_namespace, sa = opts["serviceaccount"].split(":")
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": namespace},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": opts["clusterrole"]},
                    "subjects": [{"kind": "ServiceAccount", "name": sa,
                                  "namespace": sa_namespace}]})

    def job_from_cronjob(self, namespace: str, source: str) -> None:
        """The Job's pod runs the CronJob's container command: here, as a process."""
        cronjob = self.kube.get(CRONJOBS, source.removeprefix("--from=cronjob/"), namespace)
        container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        run_umec(container["args"], self.cwd, self.env)


def run_umec(args: list[str], cwd: Path, env: dict[str, str],
             stdout: Path | None = None) -> None:
    done = subprocess.run([sys.executable, "-m", "umec", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
    if stdout is not None:
        stdout.write_text(done.stdout)


def run_line(line: str, kubectl: Kubectl) -> None:
    """One shell line of the guide: VAR=value prefixes, `> file`, umec or kubectl."""
    words = shlex.split(line)
    env = dict(kubectl.env)
    while "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    stdout = None
    if ">" in words:
        at = words.index(">")
        stdout, words = kubectl.cwd / words[at + 1], words[:at]
    if words[0] == "umec":
        run_umec(words[1:], kubectl.cwd, env, stdout)
    elif words[0] == "kubectl":
        kubectl(words[1:])
    else:
        raise AssertionError(f"{line}: a workstation command this test cannot run")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The workstation: a directory with deploy/ and ek-ca.pem (traversable by uid 10001)."""
    path = Path(tempfile.mkdtemp(prefix="umec-install-"))
    os.chmod(path, 0o755)
    shutil.copytree(REPO / "deploy", path / "deploy")
    certs = create_webhook_certs(path / "ek", "ek", "ca")   # any CA stands in for Infineon's
    shutil.copy(certs.ca_cert, path / "ek-ca.pem")
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_every_block_says_where_it_runs() -> None:
    wheres = {where for where, _ in blocks()}
    assert wheres == {"on the Pi", "workstation", "in the cluster"}, wheres


def test_the_install_guide_runs(workdir: Path) -> None:
    with FakeKubeApi((*STANDARD, CRONJOBS, DAEMONSETS, ROLEBINDINGS)) as kube:
        kube.add_node("pi-1")
        env = {**os.environ, "UMEC_KUBECONFIG": str(kube.kubeconfig(workdir / "kubeconfig")),
               "UMEC_DATA_DIR": str(workdir / ".umec"), "COLUMNS": "200"}
        kubectl = Kubectl(kube, workdir, env)
        ran = 0
        for where, lines in blocks():
            if where == "workstation":
                for line in lines:
                    run_line(line, kubectl)
                    ran += 1
        assert ran >= 10
        check_cluster(kube, workdir)
        if os.geteuid() == 0 and PYTHON.exists():
            check_keys_load_as_the_server(kube, workdir)


def _workloads(kube: FakeKubeApi) -> Iterator[tuple[str, dict[str, Any]]]:
    for resource in (DEPLOYMENTS, DAEMONSETS, CRONJOBS):
        for (namespace, _), obj in kube.objects[resource].items():
            spec = obj["spec"]
            if resource is CRONJOBS:
                spec = spec["jobTemplate"]["spec"]
            yield namespace, spec["template"]["spec"]


def check_cluster(kube: FakeKubeApi, workdir: Path) -> None:
    # Every Secret and ConfigMap a workload mounts or reads is there, in its namespace.
    for namespace, pod in _workloads(kube):
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                kube.get(SECRETS, volume["secret"]["secretName"], namespace)
            if "configMap" in volume:
                kube.get(CONFIGMAPS, volume["configMap"]["name"], namespace)
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in kube.get(SECRETS, ref["name"], namespace)["data"]
    # The certificate job wrote every caBundle: the rendered serving CA.
    ca = base64.b64encode((workdir / "umec-install/webhook/ca.crt").read_bytes()).decode()
    hooks = [h for r in (MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS)
             for obj in kube.objects[r].values() for h in obj["webhooks"]]
    assert len(hooks) == 3 and all(h["clientConfig"]["caBundle"] == ca for h in hooks)
    # The node and the tenant namespace carry what the DaemonSet and the webhook select.
    agent = kube.get(DAEMONSETS, "umec-agent", "umec-agent")["spec"]["template"]["spec"]
    assert agent["nodeSelector"].items() <= kube.node("pi-1")["metadata"]["labels"].items()
    tenant = kube.get(NAMESPACES, "tenant-a")["metadata"]["labels"]
    assert tenant["umec.io/verify"] == "enabled"
    # The tenant's ImagePolicy is in force as the webhook reads it from the API.
    state = PolicyState()
    state.replace_all(RESOURCES[1], list(kube.objects[IMAGE_POLICIES].values()))
    assert [p.ref for p in state.current.policies] == ["ImagePolicy/tenant-a/ci"]
    assert not state.refused


def check_keys_load_as_the_server(kube: FakeKubeApi, workdir: Path) -> None:
    """The rendered Secrets, laid out by "the kubelet" for the server's pod, load as uid 10001."""
    pod = kube.get(DEPLOYMENTS, "umec-server", "umec-system")["spec"]["template"]["spec"]
    contents = {name: {k: base64.b64decode(v) for k, v in obj["data"].items()}
                for (ns, name), obj in kube.objects[SECRETS].items() if ns == "umec-system"}
    root = workdir / "kubelet"
    root.mkdir()
    os.chmod(root, 0o755)
    results = load_as(pod, pod_volumes(pod, root, contents))
    assert len(results) == 3 and set(results.values()) == {"loaded"}, results


def test_render_again_keeps_every_ca_key_and_token(tmp_path: Path) -> None:
    """A second `umec deploy render` re-issues leaf certificates only: the CAs, the key rings
    and the operator token a running cluster uses stay."""
    from umec.deploy_render import RenderConfig, render
    config = RenderConfig(tmp_path / "out", "postgresql://u:p@db/umec")
    first = render(config)
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(first.secrets_file.read_text())}
    again = render(config)
    docs2 = {d["metadata"]["name"]: d for d in yaml.safe_load_all(again.secrets_file.read_text())}
    for name in ("umec-operator", "umec-metrics", "umec-result-keys", "umec-token-keys",
                 "umec-webhook-ca", "umec-webhook-client-ca", "umec-server-ca"):
        assert docs[name] == docs2[name], name
    assert first.ca_bundle == again.ca_bundle
    assert (tmp_path / "out" / "secrets.yaml").stat().st_mode & 0o077 == 0
