"""``umec server --workers N``: uvicorn's worker supervisor, each worker on its own socket.

uvicorn's supervisor binds one listening socket and hands it to every worker. When clients open
their connections together (wrk, a pool of node agents after a restart, a proxy filling its
keep-alive pool), the first worker to wake accepts every pending connection and keeps them:
in 2 of 4 two-worker runs of ``bench/tokens/compare_issuance.py`` one worker served all 8 of
wrk's connections (633 CPU ticks against 13) and the pair ran at one worker's rate.

Here each worker binds a socket of its own to the same address with ``SO_REUSEPORT``; the
kernel then assigns each new connection to one of the sockets by a hash of its addresses, so
connections spread over the workers whatever their timing. What this changes besides:

* The socket is bound in the worker, not in the supervisor. :class:`ReusePortListeners` is
  the ``sockets`` list given to uvicorn's ``Multiprocess``: empty in the supervisor, and bound
  anew each time it is unpickled in a worker (a restarted worker too). ``umec server`` first
  tries the address once itself (:func:`probe_listen`), so a taken port is one error line and
  exit 1 before any worker starts. A worker that still cannot bind (the port was taken in
  between) logs one line and exits with uvicorn's ``STARTUP_FAILURE``, which stops the
  supervisor instead of restarting the worker in a loop; the command then exits 1 too
  (uvicorn's own supervisor exits 0 after a failed start).
* Connections still in a dying worker's accept queue are reset, not taken over by the others
  (they were with the shared socket). Clients retry; the node agent does.
* Linux lets only processes of the same effective user join a ``SO_REUSEPORT`` group, so no
  other user's process can bind the port beside the workers and take a share of the
  connections. A process of the same user can, and one bound to a more specific address
  (127.0.0.1 beside 0.0.0.0) would get them all. In Kubernetes the server's pod has a network
  namespace of its own; on a plain host, run ``umec server --workers`` as a user of its own,
  and with TLS.
* A worker whose event loop stalls keeps its share of new connections until uvicorn's health
  check notices (its pong thread does not go through the loop, so it may not); with the
  shared socket the other workers would have taken them.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from umec.cli_errors import CliError

log = logging.getLogger("umec.server")


class ListenFailed(CliError):
    check = "server.listen"
    hint = ("stop what holds the port, or choose another address with --host/--port "
            "(UMEC_LISTEN_HOST/UMEC_LISTEN_PORT)")


class WorkersFailed(CliError):
    check = "server.workers"
    hint = "see the workers' log lines above; fix what they name and start again"


def reuse_port_socket(host: str, port: int, *, reuse_port: bool = True,
                      reuse_addr: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port``, with ``SO_REUSEADDR`` (``reuse_addr``) and
    ``SO_REUSEPORT`` (``reuse_port``); not listening: uvicorn's server does that with its
    backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def probe_listen(host: str, port: int) -> None:
    """Bind the address once, without ``SO_REUSEPORT``, and let it go: :class:`ListenFailed`
    if anything listens there (one line, before a server or worker starts, instead of a log
    line and uvicorn's exit code). Without ``SO_REUSEPORT`` the bind fails beside any
    listener, a ``SO_REUSEPORT`` one too: another ``umec server --workers`` on the port would
    otherwise be joined, and the kernel would split the connections between the two."""
    try:
        reuse_port_socket(host, port, reuse_port=False).close()
    except OSError as exc:
        raise ListenFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _bound_in_worker(host: str, port: int) -> list[socket.socket]:
    """Unpickling :class:`ReusePortListeners` in a worker: its own socket, or exit."""
    try:
        return [reuse_port_socket(host, port)]
    except OSError as exc:
        # Logging is not configured yet while a worker unpickles its arguments: stderr.
        print(ListenFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}").line(),
              file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


class ReusePortListeners(list[socket.socket]):
    """The listening sockets of one worker: none in the supervisor; pickled to a worker, a new
    socket bound there (see the module's docstring)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return _bound_in_worker, (self.host, self.port)


def run_workers(config: Config) -> None:
    """Run ``config.workers`` worker processes under uvicorn's supervisor (health checks,
    restarts, signals), each serving its own ``SO_REUSEPORT`` socket.

    The supervisor holds the port for its whole life with a socket bound with
    ``SO_REUSEPORT`` but without ``SO_REUSEADDR``, never listening (so no connection is
    assigned to it): when every worker is down at once (a crash, the OOM killer), no other
    user's process can take the port before the restarted workers bind it again."""
    try:
        reserve = reuse_port_socket(config.host, config.port, reuse_addr=False)
    except OSError as exc:  # taken since umec server's probe: the same one line
        raise ListenFailed(f"cannot listen on {config.host}:{config.port}: "
                           f"{exc.strerror or exc}") from None
    try:
        _supervise(config)
    finally:
        reserve.close()


def _supervise(config: Config) -> None:
    log.info("listening on %s:%d with %d workers (SO_REUSEPORT)", config.host, config.port,
             config.workers)
    supervisor = Multiprocess(config, sockets=ReusePortListeners(config.host, config.port))
    supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise WorkersFailed(f"worker process {failed[0]} failed to start, so the server "
                            "stopped")
