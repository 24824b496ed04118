"""Every `umec` command and sub-command answers --help (a help text that Rich cannot render,
e.g. square brackets read as markup, was an internal error for the user)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from umec.cli import app


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        subcommands: dict[str, object] = getattr(command, "commands", {})
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "umec")
def test_every_command_answers_help(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
