"""Blocking work of a request, off the event loop: :func:`in_thread`, one hand-off for every
µMEC HTTP process.

A route whose work can block (a database statement, a lock, a failover) must not run it on the
event loop: the wait would stall every other request and the background followers with it
(issue 10 measured stalls of 4.9 s). So the hot routes are ``async def`` and hand their work
to :data:`EXECUTOR` with ``await in_thread(fn, ...)``.

Why not FastAPI's sync routes (``def``), or Starlette's ``run_in_threadpool``: both go through
anyio's worker threads (a pure-Python queue and condition per call, a capacity limiter, a
cancel scope) and, for sync routes, FastAPI's telemetry wrapper. In-process, a request cost
212 µs of CPU through a sync FastAPI route, 147 µs through ``run_in_threadpool`` and 118 µs
through this (``bench/http/bench_handoff.py``, docs/benchmarks.md "Session 11"); an
attestation round is two such requests.

What the hand-off keeps:

* the caller's context variables (the request id of the log lines written in the thread):
  the function runs in a copy of the caller's context, as anyio and Starlette do;
* exceptions: what the function raises is raised to the awaiting route, unchanged, except
  ``StopIteration``, which an asyncio future cannot carry (the route would wait forever): it
  arrives as a ``RuntimeError`` naming it, as anyio does;
* completion: the function runs to its end once started, even when the awaiting task is
  cancelled; a database transaction commits or rolls back whole, never half. A call still
  queued for a thread when its task is cancelled never runs. (uvicorn does not cancel a
  request's task when its client disconnects, so a disconnected request's work runs, as it
  did through anyio; what bounds a flood is the connection cap and the per-source limits.)

:data:`EXECUTOR` has anyio's default of 40 threads: requests beyond that wait in its queue,
as they waited for anyio's capacity limiter. The one request path that does not use it is
image classification (``mec_api.inference``): seconds of CPU per call, bounded by its own
limiter of concurrent classifications, where the hand-off's cost does not matter.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["EXECUTOR", "MAX_THREADS", "in_thread"]

P = ParamSpec("P")
T = TypeVar("T")

MAX_THREADS = 40
EXECUTOR = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="umec-request")


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in one of :data:`EXECUTOR`'s threads, in a copy of the
    caller's context; its result or its exception (module doc)."""
    def call() -> T:
        try:
            return fn(*args, **kwargs)
        except StopIteration as exc:
            raise RuntimeError(f"{getattr(fn, '__qualname__', fn)!s} raised StopIteration") \
                from exc
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(EXECUTOR, context.run, call)
