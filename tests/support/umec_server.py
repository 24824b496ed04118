"""``umec server`` as a real child process (so that it can be SIGKILLed and restarted)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from umec.localserver import free_port

OPERATOR_TOKEN = "fault-test-operator-token-0123456789"


class UmecServer:
    """One ``umec server`` on a fixed port and data directory; start it again after a kill."""

    def __init__(self, data_dir: Path, database_url: str, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
        self.env.update({"UMEC_DATA_DIR": str(data_dir), "UMEC_DATABASE_URL": database_url,
                         "UMEC_OPERATOR_TOKEN": OPERATOR_TOKEN, "UMEC_LOG_LEVEL": "WARNING",
                         "UMEC_LISTEN_PORT": str(self.port), "UMEC_PUBLIC_URL": self.url,
                         **{f"UMEC_{k.upper()}": v for k, v in settings.items()}})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-server-{self.starts}.log"

    def start(self, kill_at: str | None = None, timeout: float = 30) -> UmecServer:
        env = dict(self.env)
        if kill_at:
            env["UMEC_FAULT_KILL_AT"] = kill_at
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "umec", "server"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"umec server exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"umec server did not start: {self.log()}")
            time.sleep(0.05)

    def log(self, tail: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-tail:]
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_killed(self, timeout: float = 10) -> int:
        """The exit status once the process is gone (-9 after a SIGKILL)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10,
                            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
                            **kwargs)  # type: ignore[arg-type]
