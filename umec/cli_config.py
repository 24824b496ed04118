"""``umec config view`` and ``umec config use-context NAME``: the CLI's context file
(:mod:`umec.cli_contexts`), like ``kubectl config``.

* ``view`` prints the file as the parser reads it (YAML, its path in a first comment line):
  contexts with their server, ``token-file`` and ``ca-file`` paths. A token is never printed:
  the file holds only the path of the token file, and a file with any other key (a ``token:``
  pasted in by hand) is refused as ``config.invalid`` naming the key, never its value.
* ``use-context NAME`` makes NAME the current context. The file is rewritten atomically
  (:func:`keys.atomic_write`: a temporary file in the same directory, fsync, rename) with its
  mode kept; only the ``current-context:`` line changes when the file has exactly one such
  top-level line and the result reads back as the same contexts (comments and layout kept),
  else the file is rendered anew. A name no context has is refused (``config.context_unknown``,
  exit 1, one line) and the file is not touched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
import yaml

from keys.storage import atomic_write
from umec.cli_contexts import (
    ContextFile,
    ContextFileInvalid,
    context_path,
    load_context_file,
    parse_context_file,
    render_context_file,
)
from umec.cli_errors import CliError, FileUnusable

__all__ = ["config_app", "switched_text"]

config_app = typer.Typer(help="The context file (~/.config/umec/config.yaml; $XDG_CONFIG_HOME): "
                              "which server `umec nodes|policy` talk to.",
                         no_args_is_help=True)

_CURRENT_LINE = re.compile(r"^current-context:[^\n]*$", re.MULTILINE)


class ContextUnknown(CliError):
    check = "config.context_unknown"
    hint = "pick one of the names `umec config view` lists, or add that context to the file"


def _loaded(path: Path) -> ContextFile:
    file = load_context_file(path)
    if file is None:
        raise FileUnusable(f"no context file at {path}",
                           hint="create it (see `umec config --help` and the README's "
                                "\"Command line\" section)")
    return file


def switched_text(text: str, file: ContextFile, name: str, base: Path) -> str:
    """The context file's ``text`` with ``name`` as its current context: the one
    ``current-context:`` line replaced (or one added first) when that reads back as ``file``
    with the new current context, else ``file`` rendered anew."""
    want = ContextFile(file.contexts, name)
    line = "current-context: " + yaml.safe_dump(name, default_style='"').strip()
    found = _CURRENT_LINE.findall(text)
    if len(found) == 1:
        edited = _CURRENT_LINE.sub(lambda _m: line, text, count=1)
    elif not found:
        edited = line + "\n" + text
    else:
        edited = ""
    try:
        if edited and parse_context_file(edited, base) == want:
            return edited
    except ContextFileInvalid:
        pass
    return render_context_file(want, base)


@config_app.command("view")
def view() -> None:
    """Print the context file (servers and the token files' paths, never a token)."""
    path = context_path()
    file = _loaded(path)
    typer.echo(f"# {path}")
    typer.echo(render_context_file(file, path.parent), nl=False)


@config_app.command("use-context")
def use_context(name: Annotated[str, typer.Argument(help="A context's name.")]) -> None:
    """Make NAME the current context (the file is rewritten atomically)."""
    path = context_path()
    file = _loaded(path)
    if file.named(name) is None:
        known = ", ".join(c.name for c in file.contexts) or "none"
        raise ContextUnknown(f"no context named {name!r} in {path} (contexts: {known})")
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o777
        atomic_write(path, switched_text(text, file, name, path.parent).encode(), mode=mode)
    except OSError as exc:
        raise FileUnusable(f"context file {path}: {exc.strerror or exc}") from None
    typer.echo(f"current context: {name}")
