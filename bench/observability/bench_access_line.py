"""The per-request cost of request ids and the access line (issue 14), in-process, by hand::

    .venv/bin/python bench/observability/bench_access_line.py [--n 20000]

Prints microseconds per call of: one ``umec.access`` line at INFO formatted by
``umec.logs.JsonFormatter`` to /dev/null; the check below INFO plus taking a sane
``X-Request-ID``; making a new id.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernel.requestid import REQUEST_ID, request_id_of
from umec.logs import JsonFormatter

FIELDS = {"method": "POST", "path": "/attest/v1/nodes/node-1/evidence",
          "route": "/attest/v1/nodes/{node}/evidence", "status": 200, "duration_ms": 3.2,
          "peer": "127.0.0.1"}


def per_call(fn: object, n: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(JsonFormatter())
        log = logging.getLogger("umec.access")
        log.addHandler(handler)
        log.propagate = False
        REQUEST_ID.set(request_id_of(None))
        log.setLevel(logging.INFO)
        line = per_call(lambda: log.info("request", extra=FIELDS), n)
        log.setLevel(logging.WARNING)
        below = per_call(lambda: (log.isEnabledFor(logging.INFO), request_id_of(b"abc-123")), n)
        made = per_call(lambda: request_id_of(None), n)
    print(f"access line at INFO: {line:.1f} us; below INFO + a sane id: {below:.2f} us; "
          f"a new id: {made:.2f} us")


if __name__ == "__main__":
    main()
