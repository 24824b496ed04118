"""Every swtpm the tests start, in one place (tests/conftest.py loads this module as a plugin).

- ``manufacturer_ca``, ``swtpm_factory``: TPMs provisioned once per session by one manufacturer
  CA, each test starting fresh copies (same EK) — for the server, agent and CLI tests.
- ``project_ca``, ``swtpm_node``, ``foreign_swtpm``: for the TPM adapter tests, one CA and one
  running TPM per test module, and a TPM from another, untrusted manufacturer.
- ``running_oracle_swtpm``: a bare ``swtpm socket`` driven with tpm2-tools, the oracle our own
  TPM code is checked against (wrap it in a fixture of the scope you need).
- ``needs_swtpm``, ``needs_tpm2_tools``: the skip markers.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from attest.tpm.swtpm import Swtpm, SwtpmCa, swtpm_available

_HAVE_PYTSS = importlib.util.find_spec("tpm2_pytss") is not None
_REASON = ("swtpm/swtpm_setup/swtpm_localca not on PATH (apt-get install swtpm swtpm-tools)"
           if not swtpm_available() else "tpm2-pytss not installed (pip install .[node])")
needs_swtpm = [pytest.mark.swtpm,
               pytest.mark.skipif(not (swtpm_available() and _HAVE_PYTSS), reason=_REASON)]
needs_tpm2_tools = pytest.mark.skipif(
    shutil.which("tpm2_checkquote") is None or shutil.which("tpm2_makecredential") is None,
    reason="tpm2-tools not installed (apt-get install tpm2-tools): used as a test oracle")


# -- provisioned once per session, fresh copies per test -----------------------------------------

@pytest.fixture(scope="session")
def manufacturer_ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    return SwtpmCa(tmp_path_factory.mktemp("manufacturer-ca"))


@pytest.fixture(scope="session")
def provisioned_tpm_dirs(tmp_path_factory: pytest.TempPathFactory,
                         manufacturer_ca: SwtpmCa) -> Callable[[str], Path]:
    """Provision TPMs once per session (swtpm_setup is slow) and hand out copies of their state."""
    cache: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("tpm-templates")

    def template(name: str) -> Path:
        if name not in cache:
            tpm = Swtpm(base / name, manufacturer_ca)
            tpm.provision()
            cache[name] = base / name
        dest = tmp_path_factory.mktemp(f"tpm-{name}")
        shutil.copytree(cache[name], dest, dirs_exist_ok=True)
        return dest
    return template


@pytest.fixture
def swtpm_factory(provisioned_tpm_dirs: Callable[[str], Path],
                  manufacturer_ca: SwtpmCa) -> Iterator[Callable[[str], Swtpm]]:
    """Start a fresh copy of the provisioned TPM ``name`` (same EK as every other copy)."""
    if not swtpm_available():
        pytest.skip("swtpm not installed (scripts/setup.sh)")
    started: list[Swtpm] = []

    def start(name: str) -> Swtpm:
        tpm = Swtpm(provisioned_tpm_dirs(name), manufacturer_ca).start()
        started.append(tpm)
        return tpm
    yield start
    for tpm in started:
        tpm.stop()


# -- the TPM adapter tests: a project CA and a running TPM per module ----------------------------

def split_chain(pem: bytes) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(roots, intermediates) of a PEM bundle: self-issued certificates are the roots."""
    certs = x509.load_pem_x509_certificates(pem)
    roots = [c for c in certs if c.issuer == c.subject]
    return roots, [c for c in certs if c.issuer != c.subject]


@pytest.fixture(scope="module")
def project_ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    return SwtpmCa(tmp_path_factory.mktemp("project-ca"), manufacturer="umec")


@pytest.fixture(scope="module")
def swtpm_node(tmp_path_factory: pytest.TempPathFactory,
               project_ca: SwtpmCa) -> Iterator[Swtpm]:
    """A running swtpm manufactured by ``project_ca``, shared by the test module: flush
    discipline is part of what is tested, so tests must leave it with no transient objects."""
    with Swtpm(tmp_path_factory.mktemp("swtpm-node"), project_ca) as tpm:
        yield tpm


@pytest.fixture(scope="module")
def foreign_swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    """A swtpm from another manufacturer (its own swtpm_localca)."""
    ca = SwtpmCa(tmp_path_factory.mktemp("foreign-ca"), manufacturer="rogue")
    with Swtpm(tmp_path_factory.mktemp("swtpm-foreign"), ca) as tpm:
        yield tpm


# -- the oracle: a bare swtpm driven with tpm2-tools ---------------------------------------------

SWTPM = shutil.which("swtpm")
TPM2_TOOLS = shutil.which("tpm2_createek")


@dataclass
class OracleSwtpm:
    """A started swtpm: ``run`` executes a tpm2-tools command against it in ``workdir``."""

    port: int
    workdir: Path

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        proc = subprocess.run(list(args), cwd=self.workdir, env=env, capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def read(self, name: str) -> bytes:
        return (self.workdir / name).read_bytes()

    def write(self, name: str, data: bytes) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        return path


def _free_port_pair() -> int:
    """A port P such that P and P+1 were both free a moment ago (swtpm needs both)."""
    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def running_oracle_swtpm(workdir: Path) -> Iterator[OracleSwtpm]:
    """Start ``swtpm socket --tpm2`` with fresh state in ``workdir``; kill it on exit."""
    if SWTPM is None or TPM2_TOOLS is None:
        pytest.skip("swtpm and tpm2-tools are required")
    state = workdir / "tpmstate"
    state.mkdir(parents=True, exist_ok=True)
    log = (workdir / "swtpm.log").open("wb")
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(10):  # a port may be taken between probing and binding: retry
            port = _free_port_pair()
            proc = subprocess.Popen(
                [SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={state}",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                stdout=log, stderr=subprocess.STDOUT)
            if _wait_listening(port, proc, time.monotonic() + 10):
                break
            proc.kill()
            proc.wait()
            proc = None
        if proc is None:
            raise RuntimeError(f"swtpm did not start; see {workdir / 'swtpm.log'}")
        yield OracleSwtpm(port, workdir)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
