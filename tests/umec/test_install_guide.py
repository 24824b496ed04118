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
kubelet lays them out. ``# on the Pi`` and ``# in the cluster`` blocks are listed, not run.

Step 11, the host agent (``# on pi-2``, ``# build machine``): its workstation block runs like the
others (``apply -k deploy/host-join/``, an overlay with a strategic-merge patch, played here); the
rest is checked against what it names: every ``umec`` command line of the guide is accepted by
``umec … --help`` of its subcommand, the build script's options by its parser, every ``UMEC_*``
is a setting, every unit it names is in deploy/host/ and every ``Key=value`` its table claims
is in that unit file."""

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
from hypothesis import given
from hypothesis import strategies as st

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
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True)
SERVICES = Resource("", "v1", "services", "Service", True)
EXTRA = (CRONJOBS, DAEMONSETS, ROLEBINDINGS, ROLES, SERVICES)
STORED = {r.kind: r for r in (*STANDARD, *EXTRA)}
WHERES = {"on the Pi", "workstation", "in the cluster", "build machine", "on pi-2"}


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
    last_applied: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)

    def __call__(self, args: list[str]) -> None:
        namespace = None
        if args[0] == "-n":
            namespace, args = args[1], args[2:]
        verb = args[:2]
        if verb == ["apply", "-k"]:
            for doc in kustomize((self.cwd / args[2]).resolve()):
                self.apply(doc)
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
            meta = doc["metadata"]
            key = (doc["kind"], meta.get("namespace"), meta["name"])
            live = self.kube.objects[resource].get((meta.get("namespace") or "", meta["name"]))
            self.kube.apply(resource, doc if live is None else
                            three_way(live, self.last_applied.get(key), doc))
            self.last_applied[key] = doc

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


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl apply -k`` applies for the kustomizations here: resources (files, or
    directories with their own kustomization) and strategic-merge ``patches`` by path."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        path = directory / name
        docs += kustomize(path) if path.is_dir() else [
            d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        body = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [d for d in docs if (d["kind"], d["metadata"]["name"]) ==
                   (body["kind"], body["metadata"]["name"])]
        assert len(targets) == 1, f"patch {patch['path']}: {len(targets)} targets"
        merged = strategic_merge(targets[0], body)
        docs[docs.index(targets[0])] = merged
    return docs


def three_way(live: Any, last: Any, new: Any) -> Any:
    """``kubectl apply`` on a live object: what ``new`` sets wins, what the last apply set and
    ``new`` no longer does goes, and what others set (a caBundle the job wrote) stays."""
    if isinstance(live, dict) and isinstance(new, dict):
        last = last if isinstance(last, dict) else {}
        kept = {k: v for k, v in live.items() if k not in new and k not in last}
        return {**kept, **{k: three_way(live.get(k), last.get(k), v) for k, v in new.items()}}
    if isinstance(live, list) and isinstance(new, list) and all(
            isinstance(x, dict) and "name" in x for x in (*live, *new)):
        lives = {x["name"]: x for x in live}
        lasts = {x["name"]: x for x in last} if isinstance(last, list) else {}
        return [three_way(lives.get(x["name"]), lasts.get(x["name"]), x) for x in new]
    return new


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge for what the patches use: maps merge, lists of named maps
    (containers, env, volumes, volumeMounts) merge by name, other values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: strategic_merge(base[k], v) if k in base else v
                           for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(x, dict) and "name" in x for x in (*base, *patch)):
        by_name = {x["name"]: x for x in patch}
        merged = [strategic_merge(x, by_name.pop(x["name"])) if x["name"] in by_name else x
                  for x in base]
        return merged + list(by_name.values())
    return patch


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
    k3s = create_webhook_certs(path / "k3s", "k3s", "kube-system")  # stands in for k3s's CA
    shutil.copy(k3s.ca_cert, path / "k3s-server-ca.crt")
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_every_block_says_where_it_runs() -> None:
    wheres = {where for where, _ in blocks()}
    assert wheres == WHERES, wheres


def test_the_install_guide_runs(workdir: Path) -> None:
    with FakeKubeApi((*STANDARD, *EXTRA)) as kube:
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
        check_k3s_join(kube, workdir)
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
    assert len(results) == 4 and set(results.values()) == {"loaded"}, results


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
                 "umec-challenge-key",
                 "umec-webhook-ca", "umec-webhook-client-ca", "umec-server-ca"):
        assert docs[name] == docs2[name], name
    assert first.ca_bundle == again.ca_bundle
    assert (tmp_path / "out" / "secrets.yaml").stat().st_mode & 0o077 == 0


# -- step 11: the host agent ------------------------------------------------------------------

def _guide_option(line_start: str, option: str) -> str:
    """The value of ``option`` in the guide's first line starting with ``line_start``."""
    for _, lines in blocks():
        for line in lines:
            words = shlex.split(line)
            if line.startswith(line_start) and option in words:
                return words[words.index(option) + 1]
    raise AssertionError(f"no `{line_start} … {option}` line in the guide")


def _setting_variables() -> set[str]:
    from umec.settings import Settings
    return {f"UMEC_{name.upper()}" for name in Settings.model_fields} | {"UMEC_CONFIG"}


def check_k3s_join(kube: FakeKubeApi, workdir: Path) -> None:
    """Step 11: the server has the k3s CA it was rendered with, the right to make and delete
    bootstrap-token Secrets in kube-system, a Service nodes reach before they join, and a
    certificate naming the address the host agents use."""
    from cryptography import x509
    pod = kube.get(DEPLOYMENTS, "umec-server", "umec-system")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "server")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {n for n in env if n.startswith("UMEC_")} <= _setting_variables()
    ca_path = Path(env["UMEC_K3S_SERVER_CA"])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == ca_path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = kube.get(CONFIGMAPS, volume["configMap"]["name"], "umec-system")
    # byte for byte: its sha256 is the K10<hash> k3s-agent checks
    assert config_map["data"][ca_path.name].encode() == \
        (workdir / "k3s-server-ca.crt").read_bytes()
    role = kube.get(ROLES, "umec-k3s-join", "kube-system")
    verbs = {v for rule in role["rules"] if "secrets" in rule["resources"] for v in rule["verbs"]}
    # attest/service/join.py's calls, and nothing that reads kube-system's Secrets (k3s's own).
    assert verbs == {"create", "delete"}
    assert all("secrets" in rule["resources"] for rule in role["rules"])
    binding = kube.get(ROLEBINDINGS, "umec-k3s-join", "kube-system")
    assert binding["roleRef"]["name"] == "umec-k3s-join"
    assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"],
            "namespace": "umec-system"} in binding["subjects"]
    service = kube.get(SERVICES, "umec-server-nodes", "umec-system")["spec"]
    labels = kube.get(DEPLOYMENTS, "umec-server", "umec-system")["spec"]["template"][
        "metadata"]["labels"]
    assert service["type"] == "LoadBalancer" and service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} <= {p["name"] for p in container["ports"]}
    url = "https://192.0.2.10:8443"
    assert f"UMEC_SERVER_URL={url}" in section(11)
    assert [p["port"] for p in service["ports"]] == [8443]
    cert = x509.load_pem_x509_certificate((workdir / "umec-install/server/tls.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    address = _guide_option("umec deploy render", "--server-name")
    assert address in url and address in [str(ip) for ip in
                                          sans.get_values_for_type(x509.IPAddress)]


def section(number: int) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n## {number}. ")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def umec_invocations() -> list[list[str]]:
    """The arguments of every ``umec`` the guide runs (also through ``kubectl exec … --``, and
    the host agent's ``/opt/umec-agent/bin/umec``)."""
    found = []
    for _, lines in blocks():
        for line in lines:
            words = shlex.split(line)
            for at, word in enumerate(words):
                if (word == "umec" or word.endswith("/bin/umec")) and (
                        at == 0 or words[at - 1] in ("--", "sudo", "|")
                        or re.fullmatch(r"[A-Z_]+=.*", words[at - 1])):
                    args = words[at + 1:]
                    for stop in (">", "|", "&"):
                        args = args[:args.index(stop)] if stop in args else args
                    found.append(args)
    return found


def test_every_umec_command_line_in_the_guide_parses() -> None:
    """``umec SUB … --help`` exits 0 only if SUB exists and takes every option given."""
    from typer.testing import CliRunner

    from umec.cli import app
    invocations = umec_invocations()
    assert ["nodes"] in invocations and ["nodes", "remove", "pi-2"] in invocations
    assert sum(a[:2] == ["deploy", "render"] for a in invocations) == 2
    runner = CliRunner()
    for args in invocations:
        done = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert done.exit_code == 0 and "Usage" in done.output, (args, done.output)


def test_the_package_build_and_install_lines_agree_with_the_build() -> None:
    import tomllib

    from scripts.imagebuild import agentdeb
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    deb = f"{agentdeb.PACKAGE}_{version}_arm64.deb"
    builds = [shlex.split(line) for where, lines in blocks() if where == "build machine"
              for line in lines if line.startswith("scripts/build-agent-deb.sh")]
    assert len(builds) == 1
    out, *options = builds[0][1:]
    args = agentdeb.arg_parser().parse_args(["--out", out, *options])  # SystemExit if not
    assert args.arch == ["arm64"]
    installs = [line for where, lines in blocks() if where == "on pi-2" for line in lines
                if line.startswith("sudo apt install ")]
    assert installs == [f"sudo apt install ./{deb}"]
    assert f"{out}/{deb}" in section(11)


UNIT_LISTS = {"Before", "After", "Requires", "Wants", "WantedBy"}


def test_the_host_agent_section_names_what_deploy_host_has() -> None:
    """Every UMEC_* is a setting; every unit it names is in deploy/host; every `Key=value` its
    table claims for a file of deploy/host is in that file."""
    from tests.umec.test_host_units import HOST, parse_unit, values
    text = section(11)
    assert set(re.findall(r"UMEC_[A-Z0-9_]+", text)) - _setting_variables() == set()
    claims = re.findall(r"^\| `([^`]+)` \| `([A-Za-z]+)=([^`]*)` \|", text, re.M)
    assert len(claims) >= 10
    for name, key, claimed in claims:
        unit = parse_unit((HOST / name).read_text())
        found = [v for part in unit for v in values(unit, part, key)]
        if key in UNIT_LISTS:
            assert set(claimed.split()) <= set(" ".join(found).split()), (name, key, found)
        else:
            assert claimed in found, (name, key, claimed, found)
    named = set(re.findall(r"(?:systemctl \w+(?: --\S+)*|journalctl -u) "
                           r"([a-z0-9-]+(?: [a-z0-9-]+)*)", text))
    units = {u for group in named for u in group.split() if u.startswith(("umec-", "k3s-"))}
    assert {"umec-agent", "umec-agent-join", "k3s-agent"} <= units
    for unit in units - {"k3s-agent"}:
        assert (HOST / f"{unit}.service").is_file(), unit
    assert (HOST / "k3s-agent.service.d").is_dir()


def test_render_refuses_a_k3s_ca_that_is_not_a_certificate(tmp_path: Path) -> None:
    """Its sha256 goes into every join token: a wrong file is refused, nothing is written."""
    (tmp_path / "k3s-server-ca.crt").write_text("not a certificate\n")
    done = subprocess.run([sys.executable, "-m", "umec", "deploy", "render", "--dir", "out",
                           "--database-url", "postgresql://u:p@db/umec", "--k3s-server-ca",
                           "k3s-server-ca.crt"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "error: file: --k3s-server-ca k3s-server-ca.crt: not a PEM certificate" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


_TREE = st.recursive(st.integers(0, 3) | st.text("ab", max_size=2),
                     lambda inner: st.dictionaries(st.sampled_from("xyz"), inner, max_size=3),
                     max_leaves=8)


@given(_TREE, _TREE, _TREE)
def test_three_way_apply_sets_what_new_says_and_is_idempotent(live: Any, last: Any,
                                                              new: Any) -> None:
    merged = three_way(live, last, new)
    if not isinstance(new, dict):
        assert merged == new
    else:
        assert set(new) <= set(merged)
        assert three_way(merged, new, new) == merged  # the same apply again changes nothing
        if isinstance(live, dict) and isinstance(last, dict):
            for key in set(last) - set(new):
                assert key not in merged            # what the last apply set and new drops


def test_the_deploy_readmes_point_to_the_guide_and_agree_with_it() -> None:
    host = (REPO / "deploy/host/README.md").read_text()
    deploy = (REPO / "deploy/README.md").read_text()
    assert "`docs/install.md`, step 11" in host and "`docs/install.md`, step 11" in deploy
    installs = set(re.findall(r"sudo apt install \./\S+\.deb", host))
    assert installs == {line for _, lines in blocks() for line in lines
                        if line.startswith("sudo apt install ./")}
    for text in (host, deploy):
        assert set(re.findall(r"UMEC_[A-Z0-9_]+", text)) - _setting_variables() == set()
    assert "kubectl apply -k deploy/host-join/" in deploy and "deploy/host-join/" in host
