"""Debian packages for a target architecture, without touching the host's dpkg.

A private apt root per architecture (its own sources, lists, cache and an empty dpkg status)
resolves and downloads ``.deb`` files over the signed archive (apt checks them against the
Release file, keyring ``/usr/share/keyrings/debian-archive-keyring.gpg``). They are extracted
by :func:`confine.extract_deb` (``dpkg-deb --fsys-tarfile`` read by a tar reader that never
follows a symlink out of the rootfs): no maintainer script runs, so no emulator is needed for
a foreign architecture. The lock then pins each file's SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

from scripts.imagebuild.confine import (
    extract_deb,
    make_dirs,
    read_file,
    remove_tree,
    resolve_in,
    write_file,
)
from scripts.imagebuild.debdeps import DebInfo, closure, parse_control
from scripts.imagebuild.errors import InputHashMismatch, StepFailed
from scripts.imagebuild.lockfile import Pin

SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = (("http://deb.debian.org/debian", "bookworm"),
           ("http://deb.debian.org/debian", "bookworm-updates"),
           ("http://deb.debian.org/debian-security", "bookworm-security"))
TRIPLET = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu",
           "armhf": "arm-linux-gnueabihf"}
# Dropped from every rootfs: documentation (copyright files stay), manuals, translations.
SLIM = ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
        "usr/share/bug", "usr/share/doc-base", "usr/share/menu", "usr/share/gdb",
        "usr/share/gcc", "usr/share/bash-completion")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as body:
        while chunk := body.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run(cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        what: str) -> str:
    """Run a build step; its failure is a StepFailed with the command's last output lines."""
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise StepFailed(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def deb_name_version(filename: str) -> tuple[str, str]:
    """``name_1%3a2.0-1_arm64.deb`` -> ``("name", "1:2.0-1")``."""
    stem = filename.removesuffix(".deb")
    parts = stem.split("_")
    if len(parts) != 3:
        raise StepFailed(f"{filename}: not name_version_arch.deb")
    return parts[0], urllib.parse.unquote(parts[1])


class Apt:
    """apt for one architecture in a private root (``root``)."""

    def __init__(self, root: Path, arch: str) -> None:
        self.root, self.arch = root, arch
        for sub in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d",
                    "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
                    "var/lib/dpkg"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "var/lib/dpkg/status").touch()
        (root / "etc/apt/sources.list").write_text("".join(
            f"deb [signed-by={KEYRING}] {uri} {suite} main\n" for uri, suite in SOURCES))
        conf = {"Dir": f"{root}/", "Dir::State::status": f"{root}/var/lib/dpkg/status",
                "Dir::Etc::TrustedParts": "/etc/apt/trusted.gpg.d",
                "APT::Architecture": arch, "APT::Install-Recommends": "false",
                "APT::Install-Suggests": "false", "Acquire::Languages": "none",
                "Debug::NoLocking": "true"}
        body = "".join(f'{k} "{v}";\n' for k, v in conf.items())
        (root / "apt.conf").write_text(body + f'APT::Architectures {{ "{arch}"; }};\n')
        self.env = {**os.environ, "APT_CONFIG": str(root / "apt.conf"), "LC_ALL": "C"}

    def update(self) -> None:
        run(["apt-get", "update", "-qq"], env=self.env, what=f"apt-get update ({self.arch})")

    def resolve(self, packages: Iterable[str]) -> list[tuple[str, str]]:
        """(name, version) of everything installing ``packages`` onto nothing takes."""
        out = run(["apt-get", "install", "--download-only", "-y", "-qq", "--print-uris",
                   *packages], env=self.env, what=f"apt resolve ({self.arch})")
        found = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1].endswith(".deb"):
                found.append(deb_name_version(fields[1]))
        return sorted(found)

    def download(self, wanted: Iterable[tuple[str, str]], dest: Path) -> list[Path]:
        """Download ``name=version`` for each into ``dest`` (files already there are kept)."""
        dest.mkdir(parents=True, exist_ok=True)
        have = {deb_name_version(p.name): p for p in dest.glob("*.deb")}
        missing = [f"{n}={v}" for n, v in wanted if (n, v) not in have]
        if missing:
            run(["apt-get", "download", "-qq", *missing], cwd=dest, env=self.env,
                what=f"apt-get download ({self.arch})")
            have = {deb_name_version(p.name): p for p in dest.glob("*.deb")}
        return [have[item] for item in wanted]


def control(deb: Path) -> str:
    return run(["dpkg-deb", "-f", str(deb)], what=f"dpkg-deb -f {deb.name}")


def pins_for(debs: Iterable[Path]) -> list[Pin]:
    return [Pin(*deb_name_version(d.name), d.name, sha256_file(d)) for d in debs]


def check_pins(files: Sequence[Path], pins: Sequence[Pin]) -> None:
    """Fail closed unless each file's SHA-256 is the one its pin names."""
    for path, pin in zip(files, pins, strict=True):
        actual = sha256_file(path)
        if actual != pin.sha256:
            raise InputHashMismatch(f"{path.name}: sha256 {actual}, the lock pins {pin.sha256}")


def resolve_closure(apt: Apt, roots: Sequence[str], cache: Path) -> list[Pin]:
    """Resolve ``roots``, download, and pin the runtime closure (see debdeps)."""
    wanted = apt.resolve(roots)
    files = apt.download(wanted, cache)
    infos: dict[str, DebInfo] = {}
    by_name: dict[str, Path] = {}
    for path in files:
        info = parse_control(control(path))
        infos[info.name], by_name[info.name] = info, path
    names, missing = closure(roots, infos)
    if missing:
        raise StepFailed(f"{apt.arch}: dependencies nothing provides: {', '.join(missing)}")
    return pins_for(by_name[n] for n in names)


def fetch_pinned(apt: Apt, pins: Sequence[Pin], cache: Path) -> list[Path]:
    files = apt.download([(p.name, p.version) for p in pins], cache)
    check_pins(files, pins)
    return files


def extract(debs: Sequence[Path], rootfs: Path) -> str:
    """Extract each package into ``rootfs``; return a dpkg status for the image's scanners."""
    rootfs.mkdir(parents=True, exist_ok=True)
    paragraphs = []
    for deb in sorted(debs, key=lambda p: p.name):
        extract_deb(deb, rootfs)
        fields = control(deb).strip().splitlines()
        paragraphs.append("\n".join([fields[0], "Status: install ok installed", *fields[1:]]))
    return "\n\n".join(paragraphs) + "\n"


def slim(rootfs: Path) -> None:
    """Remove documentation, manuals and translations; keep each package's copyright."""
    for rel in SLIM:
        remove_tree(rootfs, rel)
    # glibc's iconv modules: nothing in the images calls iconv() (Python has its own codecs).
    lib = resolve_in(rootfs, "usr/lib")
    for triplet in sorted(lib.iterdir()) if lib.is_dir() else []:
        if triplet.is_dir() and not triplet.is_symlink():
            remove_tree(rootfs, f"{triplet.relative_to(rootfs)}/gconv")
    doc = resolve_in(rootfs, "usr/share/doc")
    if doc.is_dir():
        for path in sorted(doc.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif path.name != "copyright":
                path.unlink()


def ca_bundle(rootfs: Path) -> None:
    """What update-ca-certificates would write: Mozilla's roots, sorted, in one PEM file."""
    mozilla = resolve_in(rootfs, "usr/share/ca-certificates/mozilla")
    certs = sorted(mozilla.glob("*.crt"))
    if not certs:
        return
    body = b"".join(read_file(rootfs, c.relative_to(rootfs).as_posix()).rstrip(b"\n") + b"\n"
                    for c in certs)
    make_dirs(rootfs, "etc/ssl/certs")
    write_file(rootfs, "etc/ssl/certs/ca-certificates.crt", body)
