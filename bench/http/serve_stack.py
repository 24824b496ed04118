"""One ASGI app on one server stack, for ``compare_servers.py`` (issue 15).

    .venv/bin/python bench/http/serve_stack.py --stack umec [--app real|bare]

The app (``make_app``, also the factory granian imports):

- ``real``: ``umec server``'s app, composed as the CLI does (``Settings()`` from the ``UMEC_*``
  environment, ``build_server``), plus one async route ``GET /bench/ping`` returning a small
  JSON: a route that does nothing, behind the real middleware stack (request ids, metrics,
  body limits) and error handlers.
- ``bare``: a FastAPI app with only ``/bench/ping`` and ``/healthz``: the server alone.

The stacks (``STACKS``): ``umec`` is ``uvicorn.run(app, **uvicorn_options())`` as every µMEC
process runs it (``BoundedHttpTools`` on uvloop: uvicorn writes a response's head, then its
body, two sends per response); the ``uvicorn-*`` stacks are stock uvicorn; ``granian`` (ASGI
interface, Rust HTTP) and ``hypercorn`` (on uvloop) are other servers from PyPI, which
``pip install granian hypercorn`` puts into the venv for this benchmark only.

Two what-ifs of ``umec`` send head and body in one write (``JOIN_STACKS``, tried for issue 15
and not adopted, see docs/benchmarks.md, session 9): ``umec-join-soon`` holds the head until
the first body write and releases it on the loop's next iteration should the body not follow
(``loop.call_soon``, so a streamed response's head is never delayed); ``umec-join-cl`` holds
it only when a Content-Length was declared, with no timer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

JOIN_STACKS = ("umec-join-soon", "umec-join-cl")
STACKS = ("umec", *JOIN_STACKS, "uvicorn-httptools-uvloop", "uvicorn-httptools-asyncio",
          "uvicorn-h11-uvloop", "granian", "hypercorn")


class HeadWithBody:
    """A response cycle's transport that writes the head together with the first body chunk
    (the cycle's first write after ``http.response.start`` is the head)."""

    def __init__(self, transport: Any, cycle: Any, soon: bool) -> None:
        self._transport, self._cycle, self._soon = transport, cycle, soon
        self._head: bytes | None = None
        self._seen = False
        self._release: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if self._release is not None:
                self._release.cancel()
            self._transport.write(head + data)
            return
        if not self._seen and self._cycle.response_started:
            self._seen = True
            if self._soon or self._cycle.chunked_encoding is False:
                self._head = data
                if self._soon:
                    self._release = asyncio.get_running_loop().call_soon(self.release)
                return
        self._transport.write(data)

    def release(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())


def join_protocol(soon: bool) -> Any:
    from umec.http_limits import BoundedHttpTools

    class Joined(BoundedHttpTools):
        def on_headers_complete(self) -> None:
            previous = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle is not previous and cycle.scope["method"] != "HEAD":
                cycle.transport = HeadWithBody(self.transport, cycle, soon)  # type: ignore[assignment]
    return Joined


async def ping() -> dict[str, str]:
    return {"status": "ok", "service": "bench"}


def make_app() -> Any:
    from fastapi import FastAPI
    if os.environ.get("BENCH_APP", "real") == "bare":
        app = FastAPI()
        app.add_api_route("/healthz", ping)
    else:
        from umec.app import build_server
        from umec.logs import configure_logging
        from umec.settings import Settings
        settings = Settings()
        configure_logging(settings.log_level)
        app = build_server(settings).app
    app.add_api_route("/bench/ping", ping)
    return app


def run(stack: str, host: str, port: int) -> None:
    if stack == "granian":
        from granian import Granian
        from granian.constants import Interfaces
        Granian("serve_stack:make_app", factory=True, address=host, port=port,
                interface=Interfaces.ASGI, workers=1, log_access=False,
                working_dir=HERE).serve()
        return
    app = make_app()
    if stack == "hypercorn":
        import uvloop
        from hypercorn.asyncio import serve
        from hypercorn.config import Config
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.keep_alive_timeout = 5
        uvloop.run(serve(app, config))
        return
    import uvicorn

    from umec.http_limits import uvicorn_options

    options: dict[str, Any] = {
        "umec": uvicorn_options(),
        "umec-join-soon": {**uvicorn_options(), "http": join_protocol(soon=True)},
        "umec-join-cl": {**uvicorn_options(), "http": join_protocol(soon=False)},
        "uvicorn-httptools-uvloop": {"http": "httptools", "loop": "uvloop"},
        "uvicorn-httptools-asyncio": {"http": "httptools", "loop": "asyncio"},
        "uvicorn-h11-uvloop": {"http": "h11", "loop": "uvloop"},
    }[stack]
    uvicorn.run(app, host=host, port=port, log_config=None,
                **{"timeout_keep_alive": 5, **options})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", choices=STACKS, default="umec")
    ap.add_argument("--app", choices=("real", "bare"), default="real")
    args = ap.parse_args()
    os.environ["BENCH_APP"] = args.app
    # granian's worker imports serve_stack by name; the app imports the repo's packages.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    sys.path[:0] = [str(HERE), str(REPO)]
    from umec.settings import Settings
    settings = Settings()
    run(args.stack, settings.listen_host, settings.listen_port)


if __name__ == "__main__":
    main()
