"""What-if server for bench_rounds.py ``--variant``: ``umec server`` with one change at a time.

It composes the server exactly as ``umec server`` does (``Settings()`` from the ``UMEC_*``
environment, ``build_server``, ``uvicorn.run``) and then applies only the changes named on the
command line, so a fix proposed to a file's owner can be measured before it is made:

- ``--http httptools`` / ``--loop uvloop``: uvicorn's C HTTP parser and event loop (they need
  the ``httptools`` / ``uvloop`` packages, i.e. ``uvicorn[standard]``; setup_keylime.sh puts
  them into the benchmark venv only). ``umec server`` uses uvicorn's ``auto``, which picks
  them whenever they are installed.
- ``--no-metrics-middleware``: drops the ``@app.middleware("http")`` metrics middleware
  (Starlette's ``BaseHTTPMiddleware``) to bound what a pure-ASGI rewrite of it could save.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.middleware.base import BaseHTTPMiddleware

from umec.app import build_server
from umec.logs import configure_logging
from umec.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--no-metrics-middleware", action="store_true")
    args = ap.parse_args()
    settings = Settings()
    configure_logging(settings.log_level)
    srv = build_server(settings)
    if args.no_metrics_middleware:
        srv.app.user_middleware = [m for m in srv.app.user_middleware
                                   if m.cls is not BaseHTTPMiddleware]  # type: ignore[comparison-overlap]
    uvicorn.run(srv.app, host=settings.listen_host, port=settings.listen_port, log_config=None,
                http=args.http, loop=args.loop)


if __name__ == "__main__":
    main()
