"""Build the µMEC Trust images: ``python -m scripts.imagebuild.build --out DIR``.

For each image (``umec-trust``: server, webhook and APIs; ``umec-agent``: the TPM agent only;
``umec-classifier-app``: the sample tenant app) and architecture: Debian packages of that
architecture (private apt root, extracted by ``confine.extract_deb``, which keeps every path
inside the rootfs),
wheels for that platform, the project's wheel built from a git commit (``git archive``), three
reproducible layers (Debian, third-party Python, µMEC Trust), one OCI image index per image.
Inputs are pinned in a lock (``--lock``), written only on ``--update-lock`` and otherwise
followed exactly (a missing pin or a differing input is an error, never a new lock). See
docs/decisions.md, "Images without a Docker engine".
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from scripts.imagebuild import debian, pywheels, tpm2
from scripts.imagebuild.confine import write_file
from scripts.imagebuild.errors import LockChanged, LockInvalid
from scripts.imagebuild.lockfile import (
    ArchPins,
    Lock,
    dump_lock,
    lock_changes,
    parse_lock,
    with_arch,
)
from scripts.imagebuild.oci import Descriptor, Layout, RunConfig, rfc3339
from scripts.imagebuild.reprotar import LayerFile, write_layer
from scripts.imagebuild.rootfs import (
    DATA_DIR,
    OWNERS,
    UID,
    compile_bytecode,
    tree_size,
    write_system_files,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LOCK = REPO / "scripts" / "images.lock.json"
COMMON_DEBS = ("base-files", "netbase", "ca-certificates", "python3.11-minimal",
               "libpython3.11-stdlib")
SITE = pywheels.SITE


@dataclass(frozen=True)
class ImageSpec:
    name: str
    debs: tuple[str, ...]
    extra: str | None  # None: the package's own dependencies; else that extra's only
    description: str
    tpm2: bool = False
    policies: bool = False
    entrypoint: tuple[str, ...] = ("/usr/local/bin/umec",)


IMAGES = {
    # libstdc++6: onnxruntime and opencv link the system's (manylinux allows it); libatomic1:
    # regopy's librego dlopen()s it.
    "umec-trust": ImageSpec("umec-trust", (*COMMON_DEBS, "libstdc++6", "libatomic1"), None,
                            "µMEC Trust control plane: umec server, webhook and APIs",
                            policies=True),
    "umec-agent": ImageSpec("umec-agent", (*COMMON_DEBS, *tpm2.RUNTIME_DEBS), "agent",
                            "µMEC Trust node agent: TPM attestation only", tpm2=True),
    # The sample tenant app (issue 14): Python, fastapi, uvicorn and httpx; the package's code
    # comes along (one wheel) but none of the platform's dependencies.
    "umec-classifier-app": ImageSpec(
        "umec-classifier-app", COMMON_DEBS, "classifier-app",
        "µMEC sample tenant app: the site-camera classifier page",
        entrypoint=(pywheels.TARGET_PYTHON, "-m", "umec_examples.classifier_app")),
}


@dataclass
class Inputs:
    """What every image of one build shares."""

    out: Path
    commit: str
    epoch: int
    version: str
    app_wheel: Path
    requirements: dict[str | None, list[str]]
    constraints: Path
    lock: Lock
    update: bool
    apts: dict[str, debian.Apt] = field(default_factory=dict)
    tpm2_wheels: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def app_wheel(commit: str, work: Path, epoch: int) -> Path:
    """µMEC Trust's wheel built from ``git archive`` of the commit (not the work tree)."""
    src, dist = work / "src", work / "app-dist"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dist, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    env = {"PATH": "/usr/bin:/bin", "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0"}
    debian.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                "-w", str(dist), str(src)], env=env, what="build the umec-trust wheel")
    return next(dist.glob("umec_trust-*.whl"))


def requirements(wheel: Path) -> dict[str | None, list[str]]:
    """The wheel's Requires-Dist: base (key None) and per extra, markers resolved."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    found: dict[str | None, list[str]] = {None: []}
    extras = [line.split(":", 1)[1].strip() for line in lines
              if line.startswith("Provides-Extra:")]
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        bare = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}" \
               f"{req.specifier}"
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found[None].append(bare)
            continue
        for extra in extras:
            if req.marker.evaluate({"extra": extra}):
                found.setdefault(extra, []).append(bare)
    return found


def _pins(inputs: Inputs, image: str, arch: str) -> ArchPins | None:
    """The lock's pins (None: resolve anew, only with --update-lock; issue 12, F5)."""
    if inputs.update:
        return None
    pins = inputs.lock.pins(image, arch)
    if pins is None:
        raise LockInvalid(f"the lock pins nothing for {image} ({arch}); run with --update-lock")
    return pins


def check_lock_complete(lock: Lock) -> None:
    """Without --update-lock the lock must pin the tpm2-pytss sdist and its build tools."""
    missing = [what for what, pins in (("sources", lock.sources),
                                       ("build_tools", lock.build_tools)) if not pins]
    if missing:
        raise LockInvalid(f"the lock pins no {' and no '.join(missing)}; run with --update-lock")


def finish_lock(path: Path, lock: Lock, update: bool) -> None:
    """Write the lock only with --update-lock; otherwise what the build used must be exactly
    what the lock pinned, or LockChanged names the inputs that differ (issue 12, F5)."""
    text = dump_lock(lock)
    if update:
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return
    changed = lock_changes(parse_lock(path.read_text()), lock)
    if changed:
        raise LockChanged(f"the build used inputs the lock does not pin: {'; '.join(changed)}")


def prepare_tpm2(inputs: Inputs, arches: Sequence[str]) -> None:
    """Build tools, the tpm2-pytss sdist, each architecture's sysroot and wheel."""
    cache = inputs.out / "cache"
    tools_dir = cache / "build-tools"
    if not inputs.update:
        check_lock_complete(inputs.lock)
    if inputs.update:
        tools = pywheels.resolve(list(tpm2.BUILD_TOOLS), inputs.constraints, "amd64",
                                 tools_dir)
    else:
        tools = list(inputs.lock.build_tools)
    tool_files = pywheels.fetch_pinned(tools, "amd64", tools_dir)
    sdist_pin = None if inputs.update else inputs.lock.sources[0]
    sdist = tpm2.fetch_sdist(cache / "sources", sdist_pin)
    inputs.lock = Lock(inputs.lock.suite, inputs.lock.images, (sdist,), tuple(tools))
    python = tpm2.build_env(cache / "buildenv", tool_files)
    for arch in arches:
        started = time.monotonic()
        apt, debs = inputs.apts[arch], cache / "debs" / arch
        pins = _pins(inputs, "tpm2-pytss-sysroot", arch)
        sysroot = list(pins.debs) if pins else tpm2.resolve_sysroot(apt, debs)
        files = debian.fetch_pinned(apt, sysroot, debs)
        inputs.lock = with_arch(inputs.lock, "tpm2-pytss-sysroot", arch, ArchPins(
            tuple(sysroot), ()))
        inputs.tpm2_wheels[arch] = tpm2.build_wheel(
            python, cache / "sources" / sdist.filename, files, arch,
            inputs.out / "work" / f"tpm2-{arch}", inputs.epoch)
        inputs.report.setdefault("tpm2_pytss", {})[arch] = {
            "wheel": inputs.tpm2_wheels[arch].name,
            "sha256": debian.sha256_file(inputs.tpm2_wheels[arch]),
            "seconds": round(time.monotonic() - started, 1)}


def image_inputs(inputs: Inputs, spec: ImageSpec, arch: str) -> tuple[list[Path], list[Path]]:
    """The image's .deb and wheel files for ``arch``, pinned (resolving them when asked)."""
    cache = inputs.out / "cache"
    apt, deb_cache, wheel_cache = inputs.apts[arch], cache / "debs" / arch, cache / "wheels" / arch
    pins = _pins(inputs, spec.name, arch)
    if pins is None:
        debs = debian.resolve_closure(apt, spec.debs, deb_cache)
        reqs = list(inputs.requirements[spec.extra])
        exclude = ["umec-trust"]
        if spec.tpm2:
            reqs = [r for r in reqs if not r.startswith("tpm2-pytss")]
            reqs += requirements(inputs.tpm2_wheels[arch])[None]
            exclude.append("tpm2-pytss")
        resolved = cache / "resolve" / f"{spec.name}-{arch}"
        wheels = pywheels.resolve(reqs, inputs.constraints, arch, resolved, exclude=exclude)
        wheel_cache.mkdir(parents=True, exist_ok=True)
        for pin in wheels:
            shutil.copy(resolved / pin.filename, wheel_cache / pin.filename)
        pins = ArchPins(tuple(debs), tuple(wheels))
        inputs.lock = with_arch(inputs.lock, spec.name, arch, pins)
    stale = set(spec.debs) - {pin.name for pin in pins.debs}
    if stale:
        raise LockInvalid(f"the lock of {spec.name} ({arch}) lacks {sorted(stale)}; "
                          "run with --update-lock")
    return (debian.fetch_pinned(apt, pins.debs, deb_cache),
            pywheels.fetch_pinned(pins.wheels, arch, wheel_cache))


def deb_sizes(debs: Sequence[Path]) -> Counter[str]:
    """Installed bytes per package (documentation excluded, as slim() removes it)."""
    sizes: Counter[str] = Counter()
    for deb in debs:
        name = debian.deb_name_version(deb.name)[0]
        for line in debian.run(["dpkg-deb", "-c", str(deb)], what="dpkg-deb -c").splitlines():
            fields = line.split(None, 5)
            path = fields[5] if len(fields) == 6 else ""
            if fields and fields[0].startswith("-") and not any(
                    part in path for part in ("/usr/share/doc/", "/usr/share/man/",
                                              "/usr/share/locale/")):
                sizes[f"deb {name}"] += int(fields[2])
    return sizes


def wheel_sizes(wheels: Sequence[Path]) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            name = pywheels.wheel_name_version(wheel.name)[0]
            sizes[f"wheel {name}"] += sum(i.file_size for i in archive.infolist())
    return sizes


def pyc_size(*roots: Path) -> int:
    return sum(p.stat().st_size for root in roots for p in root.rglob("*.pyc"))


def base_layer(debs: Sequence[Path], stage: Path) -> None:
    status = debian.extract(debs, stage)
    debian.slim(stage)
    debian.ca_bundle(stage)
    write_file(stage, "var/lib/dpkg/status", status)
    write_system_files(stage)
    compile_bytecode(stage, ["usr/lib/python3.11", "usr/lib/python3/dist-packages"])


def python_layer(wheels: Sequence[Path], stage: Path) -> list[str]:
    scripts: list[str] = []
    for wheel in wheels:
        scripts += pywheels.install_wheel(wheel, stage)
    compile_bytecode(stage, [SITE])
    return scripts


def app_layer(inputs: Inputs, spec: ImageSpec, stage: Path) -> None:
    for entry in pywheels.install_wheel(inputs.app_wheel, stage):
        pywheels.write_console_script(stage, entry)
    if spec.policies:  # admission and scope Rego, found next to the packages (rego.py)
        policies = stage / SITE / "policies"
        policies.mkdir(parents=True)
        src = inputs.out / "work" / "src" / "policies"
        for rego in sorted(src.glob("*.rego")):
            if not rego.name.endswith("_test.rego"):
                shutil.copy(rego, policies / rego.name)
    compile_bytecode(stage, [SITE])


def run_config(spec: ImageSpec, inputs: Inputs) -> RunConfig:
    labels = {"org.opencontainers.image.title": spec.name,
              "org.opencontainers.image.description": spec.description,
              "org.opencontainers.image.version": inputs.version,
              "org.opencontainers.image.revision": inputs.commit,
              "org.opencontainers.image.created": rfc3339(inputs.epoch),
              "org.opencontainers.image.licenses": "Apache-2.0",
              "org.opencontainers.image.base.name": "debian:bookworm (packages, no base image)"}
    env = ("PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1",
           "PYTHONDONTWRITEBYTECODE=1", f"UMEC_DATA_DIR=/{DATA_DIR}", "HOME=/home/umec")
    return RunConfig(entrypoint=spec.entrypoint, user=f"{UID}:{UID}", env=env,
                     workdir=f"/{DATA_DIR}", labels=labels)


def build_arch(inputs: Inputs, spec: ImageSpec, arch: str, layout: Layout) -> Descriptor:
    """One image for one architecture: three layers, config and manifest in ``layout``."""
    started = time.monotonic()
    debs, wheels = image_inputs(inputs, spec, arch)
    fetched = time.monotonic()
    extra = [inputs.tpm2_wheels[arch]] if spec.tpm2 else []
    stage = inputs.out / "work" / f"{spec.name}-{arch}"
    shutil.rmtree(stage, ignore_errors=True)
    parts = {name: stage / name for name in ("debian", "python", "app")}
    base_layer(debs, parts["debian"])
    python_layer([*wheels, *extra], parts["python"])
    app_layer(inputs, spec, parts["app"])
    layers: list[tuple[LayerFile, str]] = []
    for name, why in (("debian", f"Debian bookworm {arch}: {len(debs)} packages, dpkg-deb -x"),
                      ("python", f"{len(wheels) + len(extra)} wheels for {arch}"),
                      ("app", f"umec-trust {inputs.version} from {inputs.commit[:12]}")):
        layers.append((write_layer(parts[name], stage / "blobs", epoch=inputs.epoch,
                                   owners=OWNERS), why))
    sizes = deb_sizes(debs) + wheel_sizes([*wheels, *extra, inputs.app_wheel])
    sizes["bytecode (.pyc, all)"] = pyc_size(*parts.values())
    annotations = {k: v for k, v in run_config(spec, inputs).labels.items()
                   if k.startswith("org.opencontainers.image.")}
    manifest = layout.image(arch, layers, run_config(spec, inputs), epoch=inputs.epoch,
                            annotations=annotations)
    inputs.report.setdefault("images", {}).setdefault(spec.name, {})[arch] = {
        "manifest": manifest.digest, "seconds": round(time.monotonic() - started, 1),
        "seconds_fetch": round(fetched - started, 1),
        "compressed": sum(layer.size for layer, _ in layers),
        "uncompressed": sum(layer.tar_size for layer, _ in layers),
        "files_bytes": sum(tree_size(p) for p in parts.values()),
        "layers": [{"why": why, "compressed": layer.size, "uncompressed": layer.tar_size}
                   for layer, why in layers],
        "top": sizes.most_common(10), "debs": len(debs), "wheels": len(wheels) + len(extra)}
    shutil.rmtree(stage)
    return manifest


def setup(args: argparse.Namespace) -> Inputs:
    out: Path = args.out.resolve()
    commit = git("rev-parse", args.commit)
    epoch = int(git("log", "-1", "--format=%ct", commit))
    if not args.update_lock and not args.lock.exists():
        raise LockInvalid(f"no lock at {args.lock}; create it with --update-lock")
    lock = parse_lock(args.lock.read_text()) if args.lock.exists() else Lock(debian.SUITE, {})
    update = bool(args.update_lock)
    wheel = app_wheel(commit, out / "work", epoch)
    constraints = pywheels.freeze_constraints(out / "work" / "constraints.txt")
    inputs = Inputs(out, commit, epoch, wheel.name.split("-")[1], wheel, requirements(wheel),
                    constraints, lock, update)
    inputs.report.update({"commit": commit, "source_date_epoch": epoch})
    for arch in args.arch:
        inputs.apts[arch] = debian.Apt(out / "cache" / f"apt-{arch}", arch)
        inputs.apts[arch].update()
    return inputs


def build(args: argparse.Namespace) -> dict[str, Any]:
    if platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11):
        raise SystemExit("build-images: runs on an x86_64 host with Python 3.11")
    started = time.monotonic()
    inputs = setup(args)
    specs = [IMAGES[name] for name in args.images]
    if any(spec.tpm2 for spec in specs):
        prepare_tpm2(inputs, args.arch)
    for spec in specs:
        layout_dir = inputs.out / "oci" / spec.name
        shutil.rmtree(layout_dir, ignore_errors=True)
        layout = Layout(layout_dir)
        manifests = {arch: build_arch(inputs, spec, arch, layout) for arch in args.arch}
        index = layout.finish(inputs.version, manifests, {
            "org.opencontainers.image.revision": inputs.commit,
            "org.opencontainers.image.version": inputs.version,
            "org.opencontainers.image.created": rfc3339(inputs.epoch)})
        inputs.report["images"][spec.name]["index"] = index.digest
    finish_lock(args.lock, inputs.lock, inputs.update)
    inputs.report["seconds_total"] = round(time.monotonic() - started, 1)
    (inputs.out / "report.json").write_text(json.dumps(inputs.report, indent=1) + "\n")
    return inputs.report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-images", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output dir (oci/, cache/)")
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help="lock of inputs")
    parser.add_argument("--update-lock", action="store_true", help="resolve inputs anew")
    parser.add_argument("--commit", default="HEAD", help="git commit to build (default HEAD)")
    parser.add_argument("--images", nargs="+", choices=sorted(IMAGES), default=sorted(IMAGES))
    parser.add_argument("--arch", nargs="+", choices=["amd64", "arm64"],
                        default=["amd64", "arm64"])
    args = parser.parse_args(argv)
    from kernel.errors import CheckedError
    try:
        report = build(args)
    except CheckedError as exc:
        print(f"build-images: {exc}\n  what to do: {exc.hint}", file=sys.stderr)
        return 1
    for name, arches in report["images"].items():
        print(f"{name} {arches['index']}")
        for arch, info in arches.items():
            if isinstance(info, dict):
                print(f"  {arch}: {info['compressed'] / 1e6:.1f} MB compressed, "
                      f"{info['uncompressed'] / 1e6:.1f} MB uncompressed, {info['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
