"""tpm2-pytss for the agent image, built from its sdist for each target architecture.

PyPI has no binary wheel of tpm2-pytss for any platform (it binds the system's tpm2-tss with
cffi), so it is compiled here: against Debian's tpm2-tss of the image's architecture (a sysroot
of extracted -dev packages), with Debian's cross compiler for arm64
(``gcc-aarch64-linux-gnu``) and the target interpreter's sysconfig. FAPI is left out (its
``.pc`` file is hidden): the agent uses ESAPI only, and FAPI would pull libcurl, LDAP, Kerberos
and GnuTLS into the slim image.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

from scripts.imagebuild.confine import read_file, remove_tree
from scripts.imagebuild.debian import (
    TRIPLET,
    Apt,
    check_pins,
    extract,
    fetch_pinned,
    pins_for,
    run,
    sha256_file,
)
from scripts.imagebuild.errors import StepFailed
from scripts.imagebuild.lockfile import Pin
from scripts.imagebuild.wheeltags import WHEEL_MACHINE

NAME, VERSION = "tpm2-pytss", "3.0.0"
BUILD_TOOLS = ("setuptools", "setuptools-scm", "wheel", "pycparser", "pkgconfig", "cffi",
               "packaging")
SYSROOT_DEBS = ("libtss2-dev", "libtss2-esys-3.0.2-0", "libtss2-mu0", "libtss2-rc0",
                "libtss2-sys1", "libtss2-tctildr0", "libssl-dev", "libssl3",
                "libpython3.11-dev", "libpython3.11-minimal")
# What the built module loads: the ESAPI stack and the TCTIs a node uses (device: a real TPM;
# swtpm and mssim: development). tctildr dlopen()s the TCTI it is configured with.
RUNTIME_DEBS = ("libtss2-esys-3.0.2-0", "libtss2-mu0", "libtss2-rc0", "libtss2-sys1",
                "libtss2-tctildr0", "libtss2-tcti-device0", "libtss2-tcti-swtpm0",
                "libtss2-tcti-mssim0")
VENV_PYTHON = "/usr/bin/python3.11"
HIDDEN_PC = ("tss2-fapi.pc", "tss2-policy.pc", "tss2-tcti-spi-helper.pc")


def resolve_sysroot(apt: Apt, cache: Path) -> list[Pin]:
    """Pin the sysroot's packages (exactly these, no dependencies)."""
    wanted = [item for item in apt.resolve(SYSROOT_DEBS) if item[0] in SYSROOT_DEBS]
    return pins_for(apt.download(wanted, cache))


def fetch_sdist(cache: Path, pin: Pin | None) -> Pin:
    """The sdist, pinned by the lock when it has one: a cached or downloaded file whose SHA-256
    is not the pin's raises InputHashMismatch (issue 12, F5)."""
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{NAME}=={VERSION}" if pin is None else \
        f"{NAME}=={pin.version} --hash=sha256:{pin.sha256}"
    if pin is None or not (cache / pin.filename).exists():
        reqs = cache / "sdist.txt"
        reqs.write_text(spec + "\n")
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", NAME,
             *(["--require-hashes"] if pin else []), "-r", str(reqs), "-d", str(cache)],
            what=f"pip download {NAME} sdist")
    if pin is not None:
        check_pins([cache / pin.filename], [pin])
        return pin
    found = sorted(cache.glob(f"{NAME.replace('-', '_')}-{VERSION}.tar.gz"))
    if not found:
        raise StepFailed(f"no {NAME} sdist in {cache}")
    return Pin(NAME, VERSION, found[-1].name, sha256_file(found[-1]))


def tools_key(tools: Sequence[Path]) -> str:
    """What a build venv is made of: its interpreter's and each tool wheel's SHA-256."""
    lines = [f"python {sha256_file(Path(VENV_PYTHON).resolve())}",
             *sorted(f"{path.name} {sha256_file(path)}" for path in tools)]
    return "\n".join(lines) + "\n"


def build_env(buildenv: Path, tools: Sequence[Path]) -> Path:
    """A host virtualenv with the pinned build tools (installed offline from ``tools``).

    A cached venv is reused only when its ``inputs`` file names exactly these tools (by
    SHA-256); otherwise it is deleted and built anew (issue 12, F5)."""
    python, stamp = buildenv / "bin" / "python", buildenv / "umec-build-inputs"
    key = tools_key(tools)
    if python.exists() and stamp.is_file() and stamp.read_text() == key:
        return python
    shutil.rmtree(buildenv, ignore_errors=True)
    run([VENV_PYTHON, "-m", "venv", str(buildenv)], what="build venv")
    run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         *map(str, tools)], what="install build tools")
    stamp.write_text(key)
    return python


def _env(sysroot: Path, src: Path, arch: str, sysconfig_dir: Path, epoch: int) -> dict[str, str]:
    triplet = TRIPLET[arch]
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
        "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0",
        "PKG_CONFIG_LIBDIR": f"{sysroot}/usr/lib/{triplet}/pkgconfig:{sysroot}/usr/share/pkgconfig",
        "PKG_CONFIG_PATH": "", "PKG_CONFIG_SYSROOT_DIR": str(sysroot),
        "CC": f"{triplet}-gcc", "LDSHARED": f"{triplet}-gcc -shared",
        "CFLAGS": f"-g0 -O2 -ffile-prefix-map={src}=. -I{sysroot}/usr/include "
                  f"-I{sysroot}/usr/include/{triplet}",
        "LDFLAGS": f"-L{sysroot}/usr/lib/{triplet} -Wl,--build-id=sha1",
        "_PYTHON_HOST_PLATFORM": f"linux-{WHEEL_MACHINE[arch]}",
        "_PYTHON_SYSCONFIGDATA_NAME": f"_sysconfigdata__{triplet}",
        "PYTHONPATH": str(sysconfig_dir),
    }


def build_wheel(python: Path, sdist: Path, sysroot_debs: Sequence[Path], arch: str,
                work: Path, epoch: int) -> Path:
    """Compile the sdist for ``arch``; return the wheel (``cp311-cp311-linux_<machine>``)."""
    shutil.rmtree(work, ignore_errors=True)
    sysroot, out, sysconfig_dir = work / "sysroot", work / "dist", work / "sysconfig"
    extract(sysroot_debs, sysroot)
    for name in HIDDEN_PC:
        remove_tree(sysroot, f"usr/lib/{TRIPLET[arch]}/pkgconfig/{name}")
    sysconfig_dir.mkdir(parents=True)
    data = f"_sysconfigdata__{TRIPLET[arch]}.py"
    (sysconfig_dir / data).write_bytes(read_file(sysroot, f"usr/lib/python3.11/{data}"))
    with tarfile.open(sdist) as archive:
        archive.extractall(work, filter="data")
    src = work / sdist.name.removesuffix(".tar.gz")
    out.mkdir()
    run([str(python), "-c", "import sys; from setuptools import build_meta as b; "
         "print(b.build_wheel(sys.argv[1]))", str(out)], cwd=src,
        env=_env(sysroot, src, arch, sysconfig_dir, epoch), what=f"build {NAME} ({arch})")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1 or not wheels[0].name.endswith(f"linux_{WHEEL_MACHINE[arch]}.whl"):
        raise StepFailed(f"{NAME} ({arch}) built {[w.name for w in wheels]}")
    return wheels[0]


def sysroot_files(apt: Apt, pins: Sequence[Pin], cache: Path) -> list[Path]:
    return fetch_pinned(apt, pins, cache)
