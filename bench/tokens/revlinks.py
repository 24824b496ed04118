"""Keep-alive HTTP connections to one resource server, each knowing which process serves it.

``umec server --workers 2`` is two processes behind one listening socket: the kernel hands each
accepted connection to one worker, which serves it until it closes. :class:`Links` keeps a pool
of ``http.client`` connections, balanced over the server's processes, and tells for every answer
which process (PID) gave it: the server side of the connection is found in ``/proc/net/tcp``
(local port = the server's, remote port = ours) and its socket inode in ``/proc/PID/fd``. Calls
take the connection at the head of the pool and put it back at the tail, so successive calls of
one client go to different workers, as they would behind a load balancer.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path

RETRYABLE = (ConnectionError, http.client.HTTPException, OSError)


@dataclass(frozen=True)
class Answer:
    """One call: HTTP status, the PID that answered, send and answer times (perf_counter)."""

    status: int
    pid: int
    sent: float
    answered: float
    body: bytes


def _server_inode(server_port: int, client_port: int) -> int | None:
    """The socket inode of the server side of the loopback connection from ``client_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                local, remote = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
                if local == server_port and remote == client_port and f[9] != "0":
                    return int(f[9])
    return None


def socket_owner(server_port: int, client_port: int, pids: list[int]) -> int:
    """The PID among ``pids`` that holds the server side of our connection (0 if not found)."""
    inode = _server_inode(server_port, client_port)
    if inode is None:
        return 0
    target = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == target:
                        return pid
    return 0


class _Conn:
    """One keep-alive connection and the PID of the process serving it."""

    def __init__(self, host: str, port: int, pids: list[int]) -> None:
        self.host, self.port, self.pids = host, port, pids
        self.http = http.client.HTTPConnection(host, port, timeout=30)
        self.pid = 0

    def request(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.http.request("GET", path, headers=headers)
        resp = self.http.getresponse()
        body = resp.read()
        if self.pid == 0 and self.http.sock is not None:
            self.pid = socket_owner(self.port, self.http.sock.getsockname()[1], self.pids)
        return resp.status, body

    def reset(self) -> None:
        self.http.close()
        self.http = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self.pid = 0


class Links:
    """A pool of ``size`` connections to ``host:port``, balanced over ``pids`` (the processes
    that may accept connections)."""

    def __init__(self, host: str, port: int, pids: list[int], size: int) -> None:
        self.host, self.port, self.pids = host, port, pids
        self.pool: queue.Queue[_Conn] = queue.Queue()
        for conn in self._balanced(size):
            self.pool.put(conn)

    def _balanced(self, size: int) -> list[_Conn]:
        """``size`` connections, at most ``ceil(size / len(pids))`` per process, interleaved."""
        per = -(-size // len(self.pids))
        by_pid: dict[int, list[_Conn]] = {p: [] for p in self.pids}
        deadline = time.monotonic() + 30
        while sum(len(v) for v in by_pid.values()) < size and time.monotonic() < deadline:
            conn = _Conn(self.host, self.port, self.pids)
            conn.request("/healthz", {})
            if len(by_pid.get(conn.pid, [None] * per)) < per:
                by_pid[conn.pid].append(conn)
            else:
                conn.http.close()
        if sum(len(v) for v in by_pid.values()) < size:
            raise SystemExit(f"could not spread {size} connections over processes {self.pids}")
        lists = list(by_pid.values())
        return [c for i in range(per) for lst in lists if i < len(lst) for c in [lst[i]]]

    def spread(self) -> dict[int, int]:
        """How many pooled connections each process serves now."""
        conns = list(self.pool.queue)
        return {p: sum(1 for c in conns if c.pid == p) for p in {c.pid for c in conns}}

    def get(self, path: str, headers: dict[str, str]) -> Answer:
        conn = self.pool.get()
        try:
            for attempt in range(3):
                sent = time.perf_counter()
                try:
                    status, body = conn.request(path, headers)
                    return Answer(status, conn.pid, sent, time.perf_counter(), body)
                except RETRYABLE:  # the server closed an idle keep-alive connection: reconnect
                    conn.reset()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        finally:
            self.pool.put(conn)

    def close(self) -> None:
        while not self.pool.empty():
            self.pool.get().http.close()
