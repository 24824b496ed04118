"""A FastAPI route whose well-formed requests a plain function answers (issue 15).

FastAPI's per-request handler solves the route's dependencies, validates its parameters and
body through its own field machinery and serialises the answer with ``jsonable_encoder``. For
the attestation challenge that costs more than the challenge itself: in-process, the same two
protocol steps took 1,190 µs per round through FastAPI's handler against 885 µs as plain
Starlette routes in the same app (docs/benchmarks.md, session 12).

:func:`fast_path_route` makes a route class for one route. Its handler first offers the request
to ``fast``, a function that parses what it needs with pydantic directly and answers. ``fast``
returns ``None`` for anything it does not take as well formed (a name outside the pattern,
another media type, a body that does not validate, a body it could not read), and FastAPI's
own handler then answers exactly as it always did: the same 422s with the same error shapes,
the same 400 for a broken body. So ``fast`` only needs to be right about requests that FastAPI
would have accepted: for those it must answer what the endpoint would have.

A route that parses its own body and answers its own errors (the token endpoint's form)
can give a ``fast`` that takes every request: FastAPI's handler then only documents it.

The route stays an ordinary ``APIRoute``: the OpenAPI document comes from the endpoint's
signature, and the app's middleware and exception handlers see no difference.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

FastPath = Callable[[Request], Awaitable[Response | None]]


def fast_path_route(fast: FastPath) -> type[APIRoute]:
    """An ``APIRoute`` class whose requests go to ``fast`` first, and to FastAPI's handler when
    ``fast`` returns ``None``."""

    class FastPathRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            full = super().get_route_handler()

            async def handler(request: Request) -> Response:
                answer = await fast(request)
                return answer if answer is not None else await full(request)
            return handler

    return FastPathRoute
