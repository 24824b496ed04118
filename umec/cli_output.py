"""How ``umec`` listings print: ``--output table|json|yaml``, like kubectl and cosign.

``table`` on a terminal is a rich table (borders, colour); when stdout is not a terminal (a
pipe, a file, ``$(...)``) rich would still draw box characters and cut long values with "…" at
80 columns, so the table is plain text instead: one header line and one line per row, columns
separated by at least two spaces, values never cut, no colour — what ``awk``/``cut`` read, as
``kubectl get`` prints. ``json`` and ``yaml`` are the same document, unchanged by the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from rich.console import Console
from rich.table import Table

from umec.cli_attest import Output

__all__ = ["Output", "emit", "package_version", "plain_table", "print_document", "print_rows"]

STATE_COLOURS = {"trusted": "green", "untrusted": "red", "stale": "yellow"}
# Renders one cell of a row as text (default: the value, lists joined, None as "-").
Cell = Callable[[Mapping[str, Any]], str]


def package_version() -> str:
    """The installed distribution's version (``umec --version``)."""
    try:
        return version("umec-trust")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, the last one unpadded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = []
    for cells in [list(header), *rows]:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, cells[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def print_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
               cells: Mapping[str, Cell] | None = None, *,
               console: Console | None = None) -> None:
    """The rows as a table: rich on a terminal, :func:`plain_table` otherwise."""
    console = console or Console()
    cells = cells or {}
    text = [[cells[c](r) if c in cells else _text(r.get(c)) for c in columns] for r in rows]
    if not console.is_terminal:
        sys.stdout.write(plain_table(columns, text))
        return
    table = Table(*columns)
    for r, row in zip(rows, text, strict=True):
        colour = STATE_COLOURS.get(str(r.get("state", "")))
        table.add_row(*(f"[{colour}]{v}[/]" if colour and c == "state" else v
                        for c, v in zip(columns, row, strict=True)))
    console.print(table)


def print_document(doc: Any, output: Output) -> None:
    """``--output json`` or ``yaml``: the document on stdout."""
    if output is Output.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    import yaml
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))


def emit(doc: Any, output: Output, columns: Sequence[str],
         cells: Mapping[str, Cell] | None = None) -> None:
    """A listing (or one object) in the chosen ``--output``."""
    if output is not Output.table:
        print_document(doc, output)
        return
    print_rows(doc if isinstance(doc, list) else [doc], columns, cells)


def _verdict_lines(verdict: Mapping[str, Any] | None) -> list[str]:
    if not verdict:
        return ["last verdict:  -"]
    trusted = "trusted" if verdict.get("trusted") else "not trusted"
    lines = [f"last verdict:  {trusted} at {str(verdict.get('at') or '-')[:19]}"]
    for failure in verdict.get("failed_checks") or []:
        lines.append(f"  failed {failure.get('check')}: {failure.get('detail')}")
        if failure.get("hint"):
            lines.append(f"    what to do: {failure['hint']}")
    return lines


def node_text(node: Mapping[str, Any]) -> str:
    """``umec nodes show NODE`` as text: the node, its last verdict, its recent events."""
    lines = [f"node:          {node['name']}", f"class:         {node['node_class']}",
             f"state:         {node['state']}",
             f"since:         {str(node['state_changed_at'])[:19]}",
             f"last pass:     {str(node.get('last_pass_at') or '-')[:19]}",
             *_verdict_lines(node.get("last_verdict")), "events (newest first):"]
    rows = [[str(e["at"])[:19], e.get("previous") or "-", e["state"],
             ", ".join(e.get("failed_checks") or []) or "-", e.get("reason") or "-"]
            for e in node.get("events") or []]
    table = plain_table(("at", "from", "to", "checks", "reason"), rows) if rows else "-\n"
    return "\n".join(lines) + "\n" + "".join(f"  {line}\n" for line in table.splitlines())
