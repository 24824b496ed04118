"""Push the built indexes to a local docker-registry with skopeo and sign them with umec."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scripts.imagebuild.errors import StepFailed
from umec.localregistry import LocalRegistry

UMEC = str(Path(sys.executable).with_name("umec"))


def _run(argv: list[str], cwd: Path) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StepFailed(f"{' '.join(argv[:3])} failed ({proc.returncode}): "
                         f"{(proc.stdout + proc.stderr)[-600:]}")
    return proc.stdout


def write_key(tmp: Path) -> tuple[Path, Path]:
    """An ECDSA P-256 key pair (PEM) for this run's signatures."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp / "sign.key", tmp / "sign.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def push_one(layout: Path, version: str, host: str, tmp: Path) -> dict[str, Any]:
    dest = f"{host}/umec/{layout.name}:{version}"
    _run(["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
          f"oci:{layout}:{version}", f"docker://{dest}"], tmp)
    raw = _run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"], tmp)
    pushed = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    index = json.loads(raw)
    return {"ref": dest, "index": pushed,
            "platforms": {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}}


def push_and_sign(out: Path, version: str) -> dict[str, Any]:
    """Push every layout under ``out``/oci, sign each index recursively, verify each digest."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="umec-push-") as name:
        tmp = Path(name)
        private, public = write_key(tmp)
        with LocalRegistry(tmp / "registry") as registry:
            for layout in sorted((out / "oci").iterdir()):
                pushed = push_one(layout, version, registry.host, tmp)
                signed = _run([UMEC, "sign", "--recursive", "--key", str(private),
                               pushed["ref"]], tmp)
                repo = pushed["ref"].rsplit(":", 1)[0]
                verified = {}
                for what, digest in [("index", pushed["index"]), *pushed["platforms"].items()]:
                    verified[what] = _run([UMEC, "verify", "--key", str(public),
                                           f"{repo}@{digest}"], tmp).strip()
                results[layout.name] = {**pushed, "signed": signed.split(), "verified": verified}
                print(f"{layout.name}: pushed {pushed['index']}, signed "
                      f"{len(signed.split()) // 2} manifests, verified {sorted(verified)}")
    return results
