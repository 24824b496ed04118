"""A private PostgreSQL instance for fault tests: its own data directory, port and processes.

Fault tests stop, restart and kill PostgreSQL; they must never touch the shared server on
5432. This one is made by ``initdb`` in a temporary directory, listens on a free port on
127.0.0.1 only (its socket directory is its own), trusts local connections, and runs without
fsync (a crash of this instance loses nothing a test cares about: the tests kill the
postmaster, not the machine). PostgreSQL refuses to run as root, so under root every command
runs as the ``postgres`` user (``runuser``), which owns the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from umec.localserver import free_port

CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 16MB
log_min_messages = warning
"""


def postgres_bin() -> Path | None:
    """Debian's newest PostgreSQL server binaries, or the ones on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """initdb + pg_ctl around one throw-away cluster; ``close()`` always removes it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="umec-private-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(CONF.format(port=self.port, sockets=self.root))

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        cmd = [*self._as, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> PrivatePostgres:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (roll back and disconnect clients) or ``immediate`` (no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "-l",
                  str(self.log), "restart")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and self._pid_alive(pid)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (a crash of the database's processes): the
        next ``start`` runs crash recovery."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                                  check=False).stdout.split()
        for victim in [pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(self._pid_alive(p) for p in [pid, *map(int, children)]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres {pid} survived SIGKILL")
            time.sleep(0.05)

    @staticmethod
    def _pid_alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private instance, stopped and deleted afterwards whatever happens."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt install postgresql)")
    pg = PrivatePostgres(bindir)
    try:
        yield pg.start()
    finally:
        pg.close()


def private_postgres_or_skip() -> Iterator[PrivatePostgres]:
    """For fixtures (``yield from``): a private instance, or the test skips without binaries."""
    import pytest
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries not installed (apt install postgresql)")
    with private_postgres() as instance:
        yield instance
