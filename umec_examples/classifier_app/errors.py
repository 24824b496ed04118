"""The app's one error type: a check id, what happened, what to do; shown to the person."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A refusal or failure the page shows as ``check: detail`` plus the hint; never a trace."""

    def __init__(self, status: int, check: str, detail: str, hint: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.status, self.check, self.detail, self.hint = status, check, detail, hint

    def as_problem(self) -> dict[str, Any]:
        return {"type": "about:blank", "title": TITLES.get(self.status, "Error"),
                "status": self.status, "check": self.check, "detail": self.detail,
                "hint": self.hint}


TITLES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
          502: "Bad Gateway", 503: "Service Unavailable"}


def clip(text: str, limit: int = 300) -> str:
    """An upstream string cut to ``limit`` characters (it goes into a page)."""
    return text if len(text) <= limit else text[:limit] + "…"
