"""PyPI wheels for a target platform, and a small wheel installer for a foreign rootfs.

pip resolves and downloads for the target (``--platform`` manylinux tags of the target's
glibc, ``--python-version 3.11 --implementation cp``, binaries only); versions are held to what
the development virtualenv runs (its ``pip freeze`` is the constraint), so the image runs what
the tests ran. Wheels are then unpacked by :func:`install_wheel` (pip cannot install into a
rootfs whose interpreter is for another machine).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from scripts.imagebuild.confine import write_file
from scripts.imagebuild.debian import run, sha256_file
from scripts.imagebuild.errors import InputHashMismatch, StepFailed
from scripts.imagebuild.lockfile import Pin
from scripts.imagebuild.wheeltags import WHEEL_MACHINE

GLIBC_MINOR = 36  # Debian bookworm's glibc 2.36
TARGET_PYTHON = "/usr/bin/python3.11"
SITE = "usr/local/lib/python3.11/dist-packages"
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def platforms(arch: str) -> list[str]:
    machine = WHEEL_MACHINE[arch]
    tags = [f"manylinux_2_{n}_{machine}" for n in range(GLIBC_MINOR, 16, -1)]
    if arch in ("amd64", "arm64"):
        tags.append(f"manylinux2014_{machine}")
    return tags


def wheel_name_version(filename: str) -> tuple[str, str]:
    match = _WHEEL.match(filename)
    if match is None:
        raise StepFailed(f"{filename}: not a wheel file name")
    return normalize(match["name"]), match["version"]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(arch: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            *[arg for p in platforms(arch) for arg in ("--platform", p)]]


def resolve(requirements: Sequence[str], constraints: Path, arch: str, dest: Path,
            *, exclude: Sequence[str] = ()) -> list[Pin]:
    """Resolve and download ``requirements`` for ``arch`` into a fresh ``dest``; pin every
    wheel pip chose except ``exclude``."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    run([*_pip(arch), "-c", str(constraints), "-d", str(dest), *requirements],
        what=f"pip download ({arch})")
    pins = []
    for path in sorted(dest.glob("*.whl")):
        name, version = wheel_name_version(path.name)
        if name not in exclude:
            pins.append(Pin(name, version, path.name, sha256_file(path)))
    return pins


def fetch_pinned(pins: Sequence[Pin], arch: str, dest: Path) -> list[Path]:
    """Download exactly the pinned wheels (pip checks the hashes; so does this)."""
    dest.mkdir(parents=True, exist_ok=True)
    need = [p for p in pins if not (dest / p.filename).exists()]
    if need:
        reqs = dest / f"pinned-{arch}.txt"
        reqs.write_text("".join(f"{p.name}=={p.version} --hash=sha256:{p.sha256}\n"
                                for p in need))
        run([*_pip(arch), "--no-deps", "--require-hashes", "-r", str(reqs), "-d", str(dest)],
            what=f"pip download pinned ({arch})")
    files = [dest / p.filename for p in pins]
    for path, pin in zip(files, pins, strict=True):
        actual = sha256_file(path)
        if actual != pin.sha256:
            raise InputHashMismatch(f"{path.name}: sha256 {actual}, the lock pins {pin.sha256}")
    return files


def _target(member: str, data_dir: str, rootfs: Path) -> Path | None:
    """Where a wheel member goes in the rootfs (None: not installed, e.g. headers)."""
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts:
        raise StepFailed(f"wheel member {member!r} escapes the install directory")
    if path.parts and path.parts[0] == data_dir:
        kind, rest = path.parts[1], PurePosixPath(*path.parts[2:])
        where = {"purelib": SITE, "platlib": SITE, "scripts": "usr/local/bin",
                 "data": "usr/local"}.get(kind)
        return None if where is None else rootfs / where / rest
    return rootfs / SITE / path


def install_wheel(wheel: Path, rootfs: Path) -> list[str]:
    """Unpack ``wheel`` into ``rootfs`` like an installer; return its console scripts."""
    name, version = wheel.name.split("-")[:2]
    data_dir = f"{name}-{version}.data"
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            target = _target(info.filename, data_dir, rootfs)
            if target is None:
                continue
            body = archive.read(info)
            if target.parent.name == "bin" and body.startswith(b"#!python"):
                body = b"#!" + TARGET_PYTHON.encode() + body[len(b"#!python"):]
            executable = (info.external_attr >> 16) & 0o111 or target.parent.name == "bin"
            # confined: a symlink in the layer is never written through (issue 12, F4)
            write_file(rootfs, target.relative_to(rootfs).as_posix(), body,
                       0o755 if executable else 0o644)
        dist_info = f"{name}-{version}.dist-info"
        write_file(rootfs, f"{SITE}/{dist_info}/INSTALLER", "umec-build-images\n")
        try:
            entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        except KeyError:
            return []
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    if not parser.has_section("console_scripts"):
        return []
    return [f"{k}={v}" for k, v in parser.items("console_scripts")]


def write_console_script(rootfs: Path, spec: str) -> Path:
    """``umec=umec.cli:app`` -> an executable ``/usr/local/bin/umec``."""
    name, _, target = spec.partition("=")
    module, _, attr = target.strip().partition(":")
    return write_file(rootfs, f"usr/local/bin/{name.strip()}",
                      f"#!{TARGET_PYTHON}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
                      f"if __name__ == '__main__':\n    sys.exit({attr}())\n", 0o755)


def freeze_constraints(dest: Path) -> Path:
    """The development virtualenv's versions as a pip constraints file."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    lines = [line for line in frozen.splitlines() if "==" in line and " @ " not in line]
    dest.write_text("\n".join(lines) + "\n")
    return dest
