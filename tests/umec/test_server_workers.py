"""``umec server --workers N`` (umec/workers.py): each worker listens on a socket of its own
(``SO_REUSEPORT``), so connections opened together spread over the workers; the supervisor
holds the port while no worker does; a taken port is one error line and exit 1, with or
without workers, also when what holds it is another ``umec server --workers``."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE

from umec.localserver import free_port
from umec.workers import ListenFailed, ReusePortListeners, run_workers

UMEC = str(Path(sys.executable).with_name("umec"))


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, UMEC_DATA_DIR=str(tmp_path / "data"), UMEC_LOG_LEVEL="WARNING",
                UMEC_DATABASE_URL="")


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = subprocess.Popen([UMEC, "server", "--port", str(port), "--workers", "2"],
                            env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(_listeners(port)) < 2:
            assert proc.poll() is None, "umec server --workers 2 exited"
            assert time.monotonic() < deadline, "the workers did not listen within 60 s"
            time.sleep(0.2)
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).raise_for_status()
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _tcp_inodes(port: int, state: str) -> set[str]:
    """Inodes of the IPv4 TCP sockets on local port ``port`` in ``state`` (/proc/net/tcp:
    0A listening, 01 established)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def _owners(inodes: set[str]) -> dict[int, int]:
    """pid → how many of ``inodes`` its open files hold."""
    held: dict[int, int] = {}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:  # gone, or not ours to read
            continue
        n = sum(1 for link in links if link.startswith("socket:[")
                and link[8:-1] in inodes)
        if n:
            held[int(fd_dir.parent.name)] = n
    return held


def _listeners(port: int) -> dict[int, int]:
    return _owners(_tcp_inodes(port, "0A"))


def test_each_worker_listens_on_its_own_socket(
        two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    """Two listening sockets on the port, one per worker process, none in the supervisor
    (uvicorn's own supervisor shares one socket: one inode, held by all three)."""
    proc, port = two_workers
    listening = _tcp_inodes(port, "0A")
    assert len(listening) == 2, listening
    owners = _owners(listening)
    assert proc.pid not in owners, owners
    assert sorted(owners.values()) == [1, 1], owners


def test_connections_opened_together_reach_both_workers(
        two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    """32 connections opened at once, each answered: both workers hold some of them (with a
    shared socket, the first worker to wake could take all; by the kernel's hash, the chance
    that one socket gets all 32 is 2^-31)."""
    _, port = two_workers
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
    try:
        for conn in conns:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for conn in conns:
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "a connection got no answer"
        workers = set(_listeners(port))
        held = _owners(_tcp_inodes(port, "01"))
        served = {pid: n for pid, n in held.items() if pid in workers}
        assert sum(served.values()) == 32, held
        assert len(served) == 2, f"one worker holds every connection: {served}"
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_one_line_and_exit_1(tmp_path: Path, workers: str) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        out = subprocess.run([UMEC, "server", "--port", str(port), "--workers", workers],
                             env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert out.returncode == 1, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert lines == [f"error: server.listen: cannot listen on 127.0.0.1:{port}: Address "
                     "already in use — what to do: stop what holds the port, or choose another "
                     "address with --host/--port (UMEC_LISTEN_HOST/UMEC_LISTEN_PORT)"], lines


def test_listeners_are_bound_where_they_are_unpickled() -> None:
    """The supervisor's list is empty; each unpickling (a worker's start) binds a new
    SO_REUSEPORT socket to the same address."""
    port = free_port()
    listeners = ReusePortListeners("127.0.0.1", port)
    assert list(listeners) == []
    first, second = pickle.loads(pickle.dumps(listeners)), pickle.loads(pickle.dumps(listeners))
    try:
        assert [s.getsockname() for s in first + second] == [("127.0.0.1", port)] * 2
        assert first[0].fileno() != second[0].fileno()
        assert first[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        for sock in first + second:
            sock.close()


def test_a_worker_that_cannot_bind_exits_with_startup_failure(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The port was taken after the probe: the worker prints the error line and exits with
    uvicorn's STARTUP_FAILURE, which stops the supervisor instead of a restart loop."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(SystemExit) as exited:
            pickle.loads(pickle.dumps(ReusePortListeners("127.0.0.1", port)))
    finally:
        holder.close()
    assert exited.value.code == STARTUP_FAILURE == 3
    assert capsys.readouterr().err.startswith(
        f"error: server.listen: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_a_second_server_on_the_port_of_one_with_workers_is_refused(
        two_workers: tuple[subprocess.Popen[bytes], int], tmp_path: Path) -> None:
    """The running workers' sockets have SO_REUSEPORT; a second server must not join them
    (the kernel would split the connections between two servers)."""
    _, port = two_workers
    out = subprocess.run([UMEC, "server", "--port", str(port), "--workers", "2"],
                         env=_env(tmp_path / "second"), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert out.stderr.startswith(f"error: server.listen: cannot listen on 127.0.0.1:{port}: "
                                 "Address already in use"), out.stderr


def test_the_supervisor_holds_the_port_while_every_worker_is_down(
        two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    """Both workers killed at once: until the supervisor has started new ones, no other
    socket can bind the port (the supervisor's reserve), and then the new workers serve."""
    proc, port = two_workers
    workers = list(_listeners(port))
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for pid in workers:
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.005)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        with pytest.raises(OSError, match="Address already in use"):
            squatter.bind(("127.0.0.1", port))
    finally:
        squatter.close()
    deadline = time.monotonic() + 60
    while len(set(_listeners(port)) - set(workers)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no new workers"
        time.sleep(0.2)
    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).raise_for_status()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_port_taken_after_the_probe_is_the_same_one_line_error() -> None:
    """The supervisor's reserve cannot bind beside a listener: ListenFailed (one line, exit
    1), not an OSError's traceback, and no worker is started."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ListenFailed, match=f"cannot listen on 127.0.0.1:{port}"):
            run_workers(Config("umec.app:create_app", factory=True, host="127.0.0.1",
                               port=port, workers=2))
    finally:
        holder.close()
