"""The webhook reloads its serving certificate in-process (issue 12 review F6): the real
``umec webhook`` over real mutual TLS, its certificate and key mounted as the kubelet mounts a
Secret (``..data`` symlink swapped atomically). After the swap, new handshakes serve the new
certificate (a client trusting only the new CA gets answers, one trusting only the old CA is
refused) with no restart, so the rotation job needs no right on the Deployment. A half-updated
or mismatched pair is never served: the one in force stays and a warning names the failure."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admission.service.certs import WebhookCerts
from tests.support.cli import clean_env
from tests.support.webhook import webhook_test_certs
from umec.localserver import free_port
from umec.webhook_process import ServingCertReloader, ServingCertReloadFailed

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="Linux only")


def mount(volume: Path, files: dict[str, bytes], generation: int) -> None:
    """Write ``files`` as the kubelet's atomic writer does: a new timestamped directory, then
    ``..data`` renamed over in one step; the per-key symlinks point through ``..data``."""
    ts = volume / f"..2026_01_0{generation}"
    ts.mkdir()
    for name, data in files.items():
        (ts / name).write_bytes(data)
        os.chmod(ts / name, 0o600)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(ts.name)
    os.rename(tmp, volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


def pair(certs: WebhookCerts) -> dict[str, bytes]:
    return {"tls.crt": certs.cert.read_bytes(), "tls.key": certs.key.read_bytes()}


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[int, WebhookCerts, Path, subprocess.Popen[str]]]:
    old = webhook_test_certs(tmp_path / "old")
    volume = tmp_path / "tls"
    volume.mkdir()
    mount(volume, pair(old), 1)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    env.update({k: v for k, v in clean_env(tmp_path).items() if v is not None})
    env.update({"UMEC_WEBHOOK_TLS_CERT": str(volume / "tls.crt"),
                "UMEC_WEBHOOK_TLS_KEY": str(volume / "tls.key"),
                "UMEC_WEBHOOK_CLIENT_CA": str(old.client_ca_cert),
                "UMEC_WEBHOOK_PORT": str(port), "UMEC_WEBHOOK_TLS_RELOAD_SECONDS": "0.2"})
    proc = subprocess.Popen([sys.executable, "-m", "umec", "webhook", "--host", "127.0.0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        while healthz(port, old, old) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "webhook did not start"
            time.sleep(0.2)
        yield port, old, volume, proc
    finally:
        proc.terminate()
        proc.wait(10)


def healthz(port: int, trusted: WebhookCerts, client: WebhookCerts) -> int | None:
    """GET /healthz over mTLS as the API server, trusting only ``trusted``'s serving CA;
    None when the handshake fails (not listening, or the served certificate is not from it)."""
    ctx = ssl.create_default_context(cafile=str(trusted.ca_cert))
    ctx.load_cert_chain(str(client.client_cert), str(client.client_key))
    try:
        return httpx.get(f"https://localhost:{port}/healthz", verify=ctx, timeout=5).status_code
    except (httpx.TransportError, ssl.SSLError):
        return None


def wait_for(check: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_a_swapped_secret_is_served_without_a_restart(
        webhook: tuple[int, WebhookCerts, Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    port, old, volume, proc = webhook
    new = webhook_test_certs(tmp_path / "new")          # a new serving CA and leaf
    assert healthz(port, new, old) is None              # not served yet
    mount(volume, pair(new), 2)
    assert wait_for(lambda: healthz(port, new, old) == 200), "new certificate never served"
    assert healthz(port, old, old) is None              # the old CA's leaf is gone
    assert proc.poll() is None                          # the same process: no restart


def test_a_mismatched_pair_is_never_served(
        webhook: tuple[int, WebhookCerts, Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    port, old, volume, proc = webhook
    new = webhook_test_certs(tmp_path / "new")
    mount(volume, {"tls.crt": new.cert.read_bytes(), "tls.key": old.key.read_bytes()}, 2)
    time.sleep(1.0)                                     # five reload periods
    assert healthz(port, old, old) == 200               # the pair in force still serves
    mount(volume, pair(new), 3)                         # the kubelet's next, complete update
    assert wait_for(lambda: healthz(port, new, old) == 200)
    proc.terminate()
    _, stderr = proc.communicate(timeout=10)
    failed = [json.loads(line) for line in stderr.splitlines()
              if line.startswith("{") and "webhook.tls_reload_failed" in line]
    assert failed and "not the certificate's key" in failed[0]["msg"]


def test_the_reloader_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    certs = webhook_test_certs(tmp_path / "c")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    reloader = ServingCertReloader(ctx, certs.cert, certs.key, 1.0)
    assert reloader.check() is False and reloader.check() is False   # first load; unchanged
    certs.key.write_bytes(b"not a key")
    with pytest.raises(ServingCertReloadFailed):
        reloader.check()
    certs.key.unlink()
    with pytest.raises(ServingCertReloadFailed):
        reloader.check()
    assert reloader.reloads == 0
