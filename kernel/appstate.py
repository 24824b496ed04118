"""What a domain's routes need, read from the app's state: :func:`app_state`.

Each domain's service layer publishes module-level routers; ``umec`` puts the collaborators on
``app.state.<name>`` and includes the routers. A route asks for them through a typed
dependency that calls :func:`app_state` (``async``: reading the state costs no thread-pool hop).
A router served without its collaborator is a wiring error, said plainly (a 500 without a stack
trace to the client), not an ``AttributeError`` somewhere in a route.
"""

from __future__ import annotations

from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


def app_state(request: Request, name: str, kind: type[T]) -> T:
    """``request.app.state.<name>``, which must be a ``kind``."""
    value = getattr(request.app.state, name, None)
    if not isinstance(value, kind):
        raise RuntimeError(f"app.state.{name} is {type(value).__name__}, not a {kind.__name__}: "
                           f"set it before serving the routers that read it (umec does)")
    return value
