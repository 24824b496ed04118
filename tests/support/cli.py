"""Running ``umec`` in tests: through typer's CliRunner (the same click group the console script
runs) or as ``python -m umec`` in its own process, with a clean environment, and the one-line
error every failure must print."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from umec.cli import app

WHAT_TO_DO = " — what to do: "


def clean_env(tmp_path: Path) -> dict[str, str | None]:
    """No UMEC_* from the caller's environment; state in tmp_path."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("UMEC_")}
    clean.update({"UMEC_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"})
    return clean


def umec(args: list[str], env: dict[str, str | None]) -> tuple[int, str, str]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(app, args, env=env, prog_name="umec")
    finally:  # `umec api` configures logging onto CliRunner's stderr, closed after the call
        root.handlers[:] = handlers
        root.setLevel(level)
    return result.exit_code, result.stdout, result.stderr


def umec_process(args: list[str], env: dict[str, str | None]) -> tuple[int, str, str]:
    """``python -m umec ARGS`` as its own process (the console script's path)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    full.update({k: v for k, v in env.items() if v is not None})
    done = subprocess.run([sys.executable, "-m", "umec", *args], capture_output=True, text=True,
                          timeout=120, env=full, check=False)
    return done.returncode, done.stdout, done.stderr


def one_error_line(stderr: str, stdout: str = "") -> str:
    """The single stderr line; no traceback anywhere."""
    assert "Traceback" not in stderr + stdout
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and WHAT_TO_DO in lines[0], lines[0]
    return lines[0]


def assert_error(result: tuple[int, str, str], code: int, *needles: str) -> str:
    exit_code, stdout, stderr = result
    assert exit_code == code, (exit_code, stdout, stderr)
    line = one_error_line(stderr, stdout)
    for needle in needles:
        assert needle in line, (needle, line)
    return line
