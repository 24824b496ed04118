"""Capture the JSON log lines the processes write (umec.logs.JsonFormatter), formatted as they
are emitted: a line's ``request_id`` comes from the context of the thread that wrote it, so
formatting later (as caplog does) would lose it."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from umec.logs import JsonFormatter


class JsonLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        return [line for line in list(self.lines)
                if all(line.get(k) == v for k, v in fields.items())]

    def wait_for(self, count: int = 1, timeout: float = 5.0,
                 **fields: Any) -> list[dict[str, Any]]:
        """The lines with these fields once there are ``count`` of them (an access line is
        written after its answer is sent, so the client may see the answer first)."""
        deadline = time.monotonic() + timeout
        while len(found := self.where(**fields)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return found


@contextlib.contextmanager
def json_lines(*loggers: str) -> Iterator[JsonLines]:
    """Every line of the ``umec`` loggers (INFO and above) while the block runs."""
    handler = JsonLines()
    root = logging.getLogger()
    names = loggers or ("umec",)
    levels = {n: logging.getLogger(n).level for n in names}
    root.addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield handler
        handler.wait_for(logger="umec.access")   # the last request's line is in
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
