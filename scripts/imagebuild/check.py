"""Check built images: ``python -m scripts.imagebuild.check --out DIR [--run] [--push]``.

* static (every architecture): the config's platform, user 10001 and entrypoint (``umec``; the
  sample app's ``python3.11 -m umec_examples.classifier_app``);
  every ELF file in every layer is code for the image's architecture (e_machine), and every
  installed wheel's ``WHEEL`` tags fit it.
* ``--run`` (amd64, as root): ``umoci unpack`` the image and run its entrypoint in a chroot
  inside new mount and PID namespaces (``unshare``) as user 10001: ``umec --help``; for
  umec-trust ``umec server`` answers ``/healthz`` with SQLite in a fresh data dir; the native
  modules import (cv2, onnxruntime, psycopg, …; tpm2_pytss in the agent). The sample app's
  image: its modules import, the platform's heavy ones are absent, it answers ``/healthz``.
* ``--compare OTHER``: the same image indexes (digests) as another build's output.
* ``--push``: a local docker-registry, ``skopeo copy --all`` of each index, ``umec sign
  --recursive`` and ``umec verify`` of the index and of each platform's manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from scripts.imagebuild.elf import matches_arch, needed_libraries, read_elf_header
from scripts.imagebuild.errors import StepFailed, WrongArchitecture
from scripts.imagebuild.oci import PLATFORMS, REF_NAME
from scripts.imagebuild.wheeltags import parse_wheel_file, tag_problems

IMPORTS = {"umec-trust": "import cv2, numpy, onnxruntime, psycopg, sqlalchemy, sigstore, "
                         "kubernetes, regopy, nacl, fastapi, uvicorn, umec.app",
           "umec-agent": "import tpm2_pytss, cryptography, httpx; from tpm2_pytss import ESAPI; "
                         "import umec.agent_process, attest.agent",
           "umec-classifier-app": "import fastapi, uvicorn, httpx, "
                                  "umec_examples.classifier_app.web"}
ABSENT_FROM_AGENT = ("onnxruntime", "cv2", "sigstore", "fastapi", "sqlalchemy", "kubernetes",
                     "numpy", "uvicorn")
ABSENT_FROM_APP = ("onnxruntime", "cv2", "sigstore", "sqlalchemy", "kubernetes", "numpy",
                   "tpm2_pytss", "cryptography", "typer")


@dataclass
class StaticReport:
    arch: str
    files: int = 0
    elf: int = 0
    wheels: int = 0
    libraries: int = 0

    def line(self) -> str:
        return (f"{self.arch}: {self.files} files, {self.elf} ELF all {self.arch} "
                f"({self.libraries} sonames they need, all in the image), "
                f"{self.wheels} wheels all tagged for it")


def read_json(layout: Path, digest: str) -> Any:
    return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())


def find(layout: Path, ref: str) -> dict[str, Any]:
    for entry in json.loads((layout / "index.json").read_text())["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == ref:
            return dict(entry)
    raise StepFailed(f"{layout}: no reference {ref}")


def layer_members(layout: Path, digest: str) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """Each file and symlink of a layer with its first 20 bytes (ELF and WHEEL files whole)."""
    blob = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with gzip.open(blob, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            if member.issym():
                yield member, b""
            if not member.isreg():
                continue
            body = tar.extractfile(member)
            assert body is not None
            head = body.read(20)
            if head.startswith(b"\x7fELF") or member.name.endswith(".dist-info/WHEEL"):
                head += body.read()
            yield member, head


def check_config(config: dict[str, Any], arch: str,
                 entrypoint: tuple[str, ...] = ("/usr/local/bin/umec",)) -> None:
    platform = PLATFORMS[arch]
    if config.get("architecture") != platform["architecture"] or config.get("os") != "linux":
        raise WrongArchitecture(f"config is {config.get('os')}/{config.get('architecture')}, "
                                f"expected linux/{platform['architecture']}")
    run = config["config"]
    if run.get("User") != "10001:10001" or run.get("Entrypoint") != list(entrypoint):
        raise StepFailed(f"config runs {run.get('Entrypoint')} as {run.get('User')}; expected "
                         f"{' '.join(entrypoint)} as 10001:10001")


def _member_problems(member: tarfile.TarInfo, body: bytes, arch: str, report: StaticReport,
                     needed: dict[str, str]) -> list[str]:
    if member.name.endswith(".dist-info/WHEEL"):
        report.wheels += 1
        return [f"{member.name}: {p}" for p in tag_problems(parse_wheel_file(body.decode()),
                                                            arch)]
    header = read_elf_header(body)
    if header is None:
        return []
    report.elf += 1
    for soname in needed_libraries(body):
        needed.setdefault(soname, member.name)
    if not matches_arch(header, arch):
        return [f"{member.name}: ELF {header.bits}-bit {header.machine_name}"]
    return []


def static_check(layout: Path, version: str, arch: str) -> StaticReport:
    """Every ELF file is ``arch`` code whose DT_NEEDED libraries are in the image, and every
    wheel's tags fit ``arch`` (else raise WrongArchitecture)."""
    manifest = read_json(layout, find(layout, f"{version}-{arch}")["digest"])
    from scripts.imagebuild.build import IMAGES
    spec = IMAGES.get(layout.name)
    check_config(read_json(layout, manifest["config"]["digest"]), arch,
                 spec.entrypoint if spec else ("/usr/local/bin/umec",))
    report, problems = StaticReport(arch), []
    names: set[str] = set()
    needed: dict[str, str] = {}  # soname -> first file that needs it
    for layer in manifest["layers"]:
        for member, body in layer_members(layout, layer["digest"]):
            names.add(member.name.rsplit("/", 1)[-1])
            if member.isreg():
                report.files += 1
                problems += _member_problems(member, body, arch, report, needed)
    problems += [f"{user} needs {soname}, which is not in the image"
                 for soname, user in sorted(needed.items()) if soname not in names]
    report.libraries = len(needed)
    if problems:
        raise WrongArchitecture(f"{layout.name} {arch}: {len(problems)} problems: "
                                + "; ".join(problems[:10]))
    return report


def unpack(layout: Path, version: str, arch: str, bundle: Path) -> Path:
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{version}-{arch}", str(bundle)],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    for mount_point in ("proc", "dev"):
        (rootfs / mount_point).mkdir(exist_ok=True)
    return rootfs


def image_env(layout: Path, version: str, arch: str) -> dict[str, str]:
    manifest = read_json(layout, find(layout, f"{version}-{arch}")["digest"])
    config = read_json(layout, manifest["config"]["digest"])
    return dict(item.split("=", 1) for item in config["config"]["Env"])


def in_image(rootfs: Path, argv: list[str]) -> list[str]:
    """``argv`` run in ``rootfs`` as 10001, in new mount and PID namespaces with /proc."""
    return ["/usr/bin/unshare", "--mount", "--pid", "--fork", f"--mount-proc={rootfs}/proc",
            "/usr/sbin/chroot", "--userspec=10001:10001", str(rootfs), *argv]


def run_in(rootfs: Path, env: dict[str, str], argv: list[str], timeout: float = 120) -> str:
    proc = subprocess.run(in_image(rootfs, argv), env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise StepFailed(f"{' '.join(argv)} in the image exited {proc.returncode}: "
                         f"{(proc.stdout + proc.stderr)[-800:]}")
    return proc.stdout


def serve_healthz(rootfs: Path, env: dict[str, str], port: int) -> dict[str, Any]:
    """``umec server`` in the image answers /healthz; returns the answer and the time to it."""
    data = rootfs / "tmp" / "umec-data"
    data.mkdir(mode=0o700)
    os.chown(data, 10001, 10001)
    env = {**env, "UMEC_DATA_DIR": "/tmp/umec-data"}
    return _healthz_of(rootfs, env, ["/usr/local/bin/umec", "server", "--host", "127.0.0.1",
                                     "--port", str(port)], port, "umec server", 90)


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def absent_modules(rootfs: Path, env: dict[str, str], modules: tuple[str, ...],
                   what: str) -> list[str]:
    absent = run_in(rootfs, env, ["/usr/bin/python3.11", "-c",
                                  "import importlib.util as u; print([m for m in "
                                  f"{list(modules)} if u.find_spec(m)])"])
    if absent.strip() != "[]":
        raise StepFailed(f"the {what} image has modules it must not: {absent.strip()}")
    return list(modules)


def serve_app_healthz(rootfs: Path, env: dict[str, str], port: int) -> dict[str, Any]:
    """The sample app in the image answers /healthz (no platform needed for that)."""
    env = {**env, "UMEC_TOKEN_ENDPOINT": "https://umec.invalid/oauth2/token",
           "UMEC_API_URL": "https://umec.invalid", "APP_LISTEN_HOST": "127.0.0.1",
           "APP_LISTEN_PORT": str(port)}
    return _healthz_of(rootfs, env, ["/usr/bin/python3.11", "-m", "umec_examples.classifier_app"],
                       port, "the sample app", 60)


def _healthz_of(rootfs: Path, env: dict[str, str], argv: list[str], port: int, what: str,
                limit: float) -> dict[str, Any]:
    """Start ``argv`` in the image and wait for its /healthz; the answer and the time to it."""
    started = time.monotonic()
    proc = subprocess.Popen(in_image(rootfs, argv), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        while time.monotonic() - started < limit:
            if proc.poll() is not None:
                raise StepFailed(f"{what} exited {proc.returncode}: "
                                 f"{proc.stderr.read().decode()[-800:] if proc.stderr else ''}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            return {"status": answer.status_code, "body": answer.json(),
                    "seconds": round(time.monotonic() - started, 1)}
        raise StepFailed(f"{what} in the image did not answer /healthz within {limit:.0f} s")
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def run_check(layout: Path, version: str) -> dict[str, Any]:
    """Unpack the amd64 image and run its entrypoint (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="umec-image-") as tmp:
        rootfs = unpack(layout, version, "amd64", Path(tmp) / "bundle")
        env = image_env(layout, version, "amd64")
        result: dict[str, Any] = {}
        run_in(rootfs, env, ["/usr/bin/python3.11", "-c", IMPORTS[layout.name]])
        result["imports"] = IMPORTS[layout.name]
        if layout.name == "umec-classifier-app":
            result["absent"] = absent_modules(rootfs, env, ABSENT_FROM_APP, "sample app")
            result["healthz"] = serve_app_healthz(rootfs, env, free_port())
            return result
        out = run_in(rootfs, env, ["/usr/local/bin/umec", "--help"])
        if "server" not in out or "agent" not in out:
            raise StepFailed(f"umec --help in the image does not list its commands: {out[:300]}")
        result["help"] = "ok"
        if layout.name == "umec-agent":
            run_in(rootfs, env, ["/usr/local/bin/umec", "agent", "--help"])
            result["absent"] = absent_modules(rootfs, env, ABSENT_FROM_AGENT, "agent")
        else:
            result["healthz"] = serve_healthz(rootfs, env, free_port())
        return result


def compare(out: Path, other: Path) -> dict[str, str]:
    """Each image's index digest in both outputs; raise if any differs."""
    digests = {}
    for layout in sorted((out / "oci").iterdir()):
        mine = find(layout, "0.1.0")["digest"]
        theirs = find(other / "oci" / layout.name, "0.1.0")["digest"]
        if mine != theirs:
            raise StepFailed(f"{layout.name}: {mine} here, {theirs} in {other}")
        digests[layout.name] = mine
    return digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check-images", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--run", action="store_true", help="run the amd64 images (root)")
    parser.add_argument("--compare", type=Path, help="another build's output dir")
    parser.add_argument("--push", action="store_true", help="push and sign (local registry)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    from kernel.errors import CheckedError
    try:
        for layout in sorted((args.out / "oci").iterdir()):
            for entry in json.loads((layout / "index.json").read_text())["manifests"]:
                ref = entry["annotations"][REF_NAME]
                if ref.startswith(f"{args.version}-"):
                    arch = ref.removeprefix(f"{args.version}-")
                    report = static_check(layout, args.version, arch)
                    print(f"{layout.name} {report.line()}")
            if args.run:
                results[layout.name] = run_check(layout, args.version)
                print(f"{layout.name} amd64 run: {json.dumps(results[layout.name])}")
        if args.compare:
            print(f"reproducible: {json.dumps(compare(args.out, args.compare))}")
        if args.push:
            from scripts.imagebuild.push import push_and_sign
            results["push"] = push_and_sign(args.out, args.version)
    except CheckedError as exc:
        print(f"check-images: {exc}\n  what to do: {exc.hint}", file=sys.stderr)
        return 1
    (args.out / "check.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
