"""A real ``docker-registry`` (Docker Distribution 2.8) on loopback, for ``umec demo`` and tests.

Filesystem storage under ``workdir``, a free 127.0.0.1 port, ready once ``/v2/`` answers (200,
or 401 when auth lines are given); always stopped on exit.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from umec.localserver import free_port

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def registry_available() -> bool:
    return Path(REGISTRY_BIN).is_file()


class LocalRegistry:
    def __init__(self, workdir: Path, *, extra_config: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.extra_config = list(extra_config)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.root = workdir / "storage"
        self.log = workdir / "registry.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> str:
        lines = ["version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.root}",
                 "  delete:", "    enabled: true", "  maintenance:", "    uploadpurging:",
                 "      enabled: false", "http:", f"  addr: {self.host}",
                 f"  secret: {secrets.token_hex(16)}", *self.extra_config]
        return "\n".join(lines) + "\n"

    def start(self) -> LocalRegistry:
        if not registry_available():
            raise FileNotFoundError("docker-registry is not installed (scripts/setup.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(self._config())
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> LocalRegistry:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
