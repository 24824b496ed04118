"""A real swtpm on loopback for oracle tests, driven with tpm2-tools.

Import :func:`running_swtpm` from a test module and wrap it in a fixture there (a fixture
imported by name would shadow itself in ruff's eyes). swtpm is always killed on teardown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SWTPM = shutil.which("swtpm")
TPM2_TOOLS = shutil.which("tpm2_createek")


@dataclass
class Swtpm:
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
def running_swtpm(workdir: Path) -> Iterator[Swtpm]:
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
        yield Swtpm(port, workdir)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
