"""Run an ASGI app with uvicorn in a background thread on loopback (demo and tests)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from umec.http_limits import uvicorn_options


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 **uvicorn_options_passed: Any) -> None:
        self.host, self.port = host, port or free_port(host)
        # The processes' own limits (header deadline and size, connection cap, keep-alive).
        options = {**uvicorn_options(), **uvicorn_options_passed}
        config = uvicorn.Config(app, host=host, port=self.port, log_config=None,
                                log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")
        scheme = "https" if options.get("ssl_certfile") else "http"
        self.url = f"{scheme}://{host}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
