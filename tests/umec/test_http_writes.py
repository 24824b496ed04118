"""One send() per response (umec.http_writes): the writes of one loop turn leave together, and
nothing written is lost, reordered or held past a close.

Real sockets and a real event loop; the real transport's ``write`` is counted, not replaced.
The last test counts the server's ``write``/``sendto`` system calls with strace when it is
installed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from umec.http_writes import HOLD_LIMIT, CoalescedWrites


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Sink(asyncio.Protocol):
    pass


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[CoalescedWrites, list[int], socket.socket]]:
    """A CoalescedWrites over a real socket transport, the sizes its real writes were given,
    and the peer socket."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(_Sink, ours)
    writes: list[int] = []
    real_write = transport.write

    def counted(data: bytes) -> None:
        writes.append(len(data))
        real_write(data)
    transport.write = counted  # type: ignore[method-assign]
    coalesced = CoalescedWrites(transport, loop)  # type: ignore[arg-type]
    try:
        yield coalesced, writes, peer
    finally:
        transport.abort()
        peer.close()


async def _read_all(peer: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), 5)
        if not chunk:
            break
        data += chunk
    return data


async def test_writes_of_one_turn_leave_as_one() -> None:
    async with _pair() as (t, writes, peer):
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"")
        t.write(bytearray(b"{}"))
        assert writes == [] and t.get_write_buffer_size() == 21
        await asyncio.sleep(0)
        assert writes == [21]
        assert await _read_all(peer, 21) == b"HTTP/1.1 200 OK\r\n\r\n{}"
        t.write(b"next")  # the next turn's write is its own
        await asyncio.sleep(0)
        assert writes == [21, 4]


async def test_more_than_the_hold_limit_is_written_at_once() -> None:
    async with _pair() as (t, writes, peer):
        t.write(b"h")
        t.write(b"x" * HOLD_LIMIT)
        assert writes == [HOLD_LIMIT + 1]  # before the turn ends: flow control sees it
        await asyncio.sleep(0)
        assert writes == [HOLD_LIMIT + 1]
        assert await _read_all(peer, HOLD_LIMIT + 1) == b"h" + b"x" * HOLD_LIMIT


async def test_close_writes_what_is_held_first() -> None:
    async with _pair() as (t, writes, peer):
        t.write(b"last words")
        t.close()
        assert writes == [10] and t.is_closing()
        assert await _read_all(peer, 11) == b"last words"  # then EOF


async def test_abort_drops_what_is_held() -> None:
    async with _pair() as (t, writes, _):
        t.write(b"never")
        t.abort()
        await asyncio.sleep(0)
        assert writes == [] and t.get_write_buffer_size() == 0


async def test_nothing_is_written_to_a_closing_transport() -> None:
    async with _pair() as (t, writes, _):
        t.write(b"late")
        t._transport.close()
        await asyncio.sleep(0)
        assert writes == []


_SERVER = textwrap.dedent("""
    import socket, sys, time
    from fastapi import FastAPI
    from umec.localserver import ServerThread
    app = FastAPI()
    @app.get("/x")
    def x() -> dict[str, int]:
        return {"a": 1}
    with ServerThread(app) as srv:
        s = socket.create_connection((srv.host, srv.port))
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(5):
            s.sendall(b"GET /x HTTP/1.1\\r\\nhost: a\\r\\n\\r\\n")
            data = b""
            while not data.endswith(b'{"a":1}'):
                data += s.recv(4096)
        print("done", flush=True)
        sys.stdin.readline()
""")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_served_response_is_one_system_call(tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    script.write_text(_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        trace = tmp_path / "trace"
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=write,sendto,sendmsg",
                                   "-s", "20", "-o", str(trace), "-p", str(proc.pid)])
        try:
            for _ in range(100):  # until strace has attached to every thread
                if trace.exists() or tracer.poll() is not None:
                    break
                subprocess.run(["sleep", "0.05"], check=True)
            subprocess.run(["sleep", "0.5"], check=True)
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n"
        finally:
            tracer.terminate()
            tracer.wait(10)
        calls = [line for line in trace.read_text().splitlines() if "HTTP/1.1 200" in line
                 or '{\\"a\\":1}' in line]
        assert len(calls) == 5 and all("HTTP/1.1 200" in line for line in calls), calls
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(10)
