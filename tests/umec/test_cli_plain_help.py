"""No box-drawing characters when output is not a terminal (issue 14, CLI conventions),
typer's own ``--help`` included: ``umec ... --help`` run as a process through a pipe is click's
plain text; on a terminal (a pty) it stays rich's panels. A reader that leaves early
(``umec nodes show --help | head``) gets no error line."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

BOX = re.compile("[\u2500-\u257f]")
UMEC = [sys.executable, "-m", "umec"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("UMEC_") and k not in {"FORCE_COLOR", "PY_COLORS",
                                                       "GITHUB_ACTIONS"}}
    env["COLUMNS"] = "100"
    return env


@pytest.mark.parametrize("args", [[], ["nodes"], ["nodes", "show"], ["policy", "set"],
                                  ["verify"]], ids=lambda a: " ".join(a) or "umec")
def test_help_through_a_pipe_has_no_box_drawing(args: list[str]) -> None:
    done = subprocess.run([*UMEC, *args, "--help"], capture_output=True, text=True,
                          env=_env(), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ") and done.stderr == ""
    assert BOX.search(done.stdout) is None, done.stdout


def test_help_on_a_terminal_keeps_the_panels() -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*UMEC, "nodes", "--help"], stdout=follower,
                              stderr=subprocess.PIPE, env=_env(), timeout=60, check=False)
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    assert BOX.search(out.decode("utf-8", "replace")) is not None


def test_a_reader_that_leaves_early_gets_no_error_line() -> None:
    read, write = os.pipe()
    os.close(read)  # nobody reads: every write is EPIPE
    try:
        done = subprocess.run([*UMEC, "nodes", "show", "--help"], stdout=write,
                              stderr=subprocess.PIPE, env=_env(), timeout=60, check=False)
    finally:
        os.close(write)
    assert done.stderr == b"", done.stderr
    assert done.returncode == 1
