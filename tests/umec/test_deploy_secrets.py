"""The non-root server and webhook read their keys from Secret volumes exactly as the kubelet
lays them out.

The test renders deploy/server.yaml and deploy/webhook.yaml, and for every Secret volume of the
two Deployments reproduces what the kubelet writes (pkg/volume/util/atomic_writer.go and
SetVolumeOwnership in pkg/volume/volume_linux.go): a timestamped directory ``..<ts>`` (0755) with
the files at ``defaultMode``, owned by root, a ``..data`` symlink to it and one symlink per key
into ``..data``; with the pod's ``fsGroup``, everything's group set to it (symlinks with lchown),
``| 0440`` on files (a Secret volume is read-only) and ``| 0550`` plus setgid on directories.
Then the real loaders run in a child process with the pod's uid, gid and supplementary fsGroup,
as the container runtime starts it: the key rings (``KeyRing.load``), the challenge key
(``load_or_create_secret``), the private keys (``load_private_key``) and the TLS pairs
(``ssl``). As shipped, everything loads; the modes the
issue reported (0400 without fsGroup) and other owners fail with a typed error, never a
traceback."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keys import KeyRing, generate_private_key
from keys.storage import private_key_pem
from tests.support.kubelet import PYTHON, REPO, load_as, pod_volumes

DEPLOY = REPO / "deploy"
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play the kubelet"),
              pytest.mark.skipif(not PYTHON.exists(), reason=f"no {PYTHON}")]

def deployment(name: str, file: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all((DEPLOY / file).read_text())
                if d and d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def tls_pair() -> dict[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "umec-server.umec-system.svc")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return {"tls.crt": cert.public_bytes(serialization.Encoding.PEM),
            "tls.key": private_key_pem(key)}


def ring_files(tmp: Path) -> dict[str, bytes]:
    """A key ring's directory, as `kubectl create secret generic --from-file=DIR` takes it."""
    KeyRing(generate_private_key()).save(tmp)
    return {p.name: p.read_bytes() for p in tmp.iterdir()}


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory a non-root uid can traverse (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="umec-kubelet-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def secrets(root_dir: Path) -> dict[str, dict[str, bytes]]:
    work = root_dir / "make"
    work.mkdir()
    (work / "r").mkdir()
    (work / "t").mkdir()
    return {"umec-server-tls": tls_pair(), "umec-webhook-tls": tls_pair(),
            "umec-result-keys": ring_files(work / "r"), "umec-token-keys": ring_files(work / "t"),
            "umec-challenge-key": {"challenge-key": os.urandom(32)}}


@pytest.mark.parametrize(("name", "file"), [("umec-server", "server.yaml"),
                                            ("umec-webhook", "webhook.yaml")])
def test_the_shipped_manifests_let_the_non_root_pods_load_their_keys(
        root_dir: Path, secrets: dict[str, dict[str, bytes]], name: str, file: str) -> None:
    pod = deployment(name, file)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] != 0
    volumes = pod_volumes(pod, root_dir, secrets)
    assert len(volumes) == (4 if name == "umec-server" else 1)
    # What the kubelet made of defaultMode 0400 with fsGroup: root:fsGroup 0440.
    for _, path in volumes:
        for f in (Path(path) / "..data").iterdir():
            st = f.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
                0, pod["securityContext"]["fsGroup"], 0o440)
    assert set(load_as(pod, volumes).values()) == {"loaded"}


def test_without_fs_group_the_keys_are_unreadable_and_say_so(
        root_dir: Path, secrets: dict[str, dict[str, bytes]]) -> None:
    """The issue's setup (defaultMode 0400, runAsUser 10001, no fsGroup): a typed error per
    volume that names the file, not a 56-line traceback."""
    pod = deployment("umec-server", "server.yaml")["spec"]["template"]["spec"]
    pod = {**pod, "securityContext": {k: v for k, v in pod["securityContext"].items()
                                      if k != "fsGroup"}}
    results = load_as(pod, pod_volumes(pod, root_dir, secrets, fs_group=None))
    for result in results.values():
        assert result.startswith(("KeyRingError", "KeyFileInaccessible")), result
        assert "Permission denied" in result


@pytest.mark.parametrize(("case", "expected"), [
    # 0400 owned by another uid: cannot open (a ring's index.json is read first)
    ("other-owner-0400", ("KeyFileInaccessible", "KeyRingError")),
    ("world-readable-0444", ("KeyFileInsecure",)),    # anyone on the node could read it
    ("group-writable-0460", ("KeyFileInsecure",)),    # fsGroup members could replace it
])
def test_modes_that_would_expose_a_key_are_refused(
        root_dir: Path, secrets: dict[str, dict[str, bytes]], case: str,
        expected: tuple[str, ...]) -> None:
    pod = deployment("umec-server", "server.yaml")["spec"]["template"]["spec"]
    if case == "other-owner-0400":
        volumes = pod_volumes(pod, root_dir, secrets, default_mode=0o400, fs_group=None,
                              owner=20000)
    else:
        volumes = pod_volumes(pod, root_dir, secrets,
                              default_mode=0o444 if "0444" in case else 0o460)
    results = load_as(pod, volumes)
    assert all(r.startswith(expected) for r in results.values()), results
