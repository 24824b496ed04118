"""Structured JSON logs: one object per line on stderr, for every process.

A line written while an HTTP request is answered carries that request's ``request_id``
(:mod:`kernel.requestid`, which also writes the access log line, logger ``umec.access``)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernel.requestid import current_request_id

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", path: Path | None = None) -> None:
    """JSON lines at ``level`` and above for the whole process, on stderr or appended to
    ``path`` (``umec demo`` keeps its server's log in a file)."""
    handler: logging.Handler = (logging.FileHandler(path, encoding="utf-8") if path is not None
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log has no request id: ours (umec.access, kernel.requestid) replaces it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
