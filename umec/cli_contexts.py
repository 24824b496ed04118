"""Where ``umec nodes|policy`` send their requests: the server named by ``UMEC_SERVER_URL`` or by
the current context of the context file, like kubectl's kubeconfig; with neither, the local
database (bootstrap mode).

The context file is ``$XDG_CONFIG_HOME/umec/config.yaml`` (``~/.config/umec/config.yaml``)::

    current-context: site-a
    contexts:
      - name: site-a
        server: https://umec.site-a.example:8443
        token-file: site-a.token      # the operator token; relative to this file's directory
        ca-file: site-a-ca.pem        # the CA the server's TLS certificate is verified with

``token-file`` and ``ca-file`` are optional: ``UMEC_OPERATOR_TOKEN`` and ``UMEC_SERVER_CA``
override them, and without a CA the system's trust store verifies the server. The parser is
strict (unknown keys, duplicate names, a current-context naming no context, a server that is
not an http(s) URL are :class:`ContextFileInvalid`, exit 2), so a typo never silently sends the
operator token elsewhere or falls back to the local database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from umec.cli_errors import FileUnusable, SettingsInvalid

if TYPE_CHECKING:
    from umec.settings import Settings

_TOP_KEYS = {"current-context", "contexts"}
_CONTEXT_KEYS = {"name", "server", "token-file", "ca-file"}
MAX_CONTEXT_FILE = 1 << 20


class ContextFileInvalid(SettingsInvalid):
    check = "config.invalid"
    hint = ("fix the named key of the context file (see `umec config --help`), or "
            "`umec config use-context NAME`")


@dataclass(frozen=True)
class Context:
    name: str
    server: str
    token_file: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class ContextFile:
    contexts: tuple[Context, ...]
    current: str | None

    def named(self, name: str) -> Context | None:
        return next((c for c in self.contexts if c.name == name), None)


@dataclass(frozen=True)
class Remote:
    """A server the CLI talks to, and with what."""

    server: str
    token: str
    ca_file: Path | None
    source: str  # "UMEC_SERVER_URL" or "context NAME"


def context_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "umec" / "config.yaml"


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ContextFileInvalid(f"{where}: expected a non-empty string")
    return value


def _server(value: Any, where: str) -> str:
    text = _string(value, where)
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if parts is None or parts.scheme not in ("https", "http") or not host:
        raise ContextFileInvalid(f"{where}: {text!r} is not an http(s) URL")
    return text.rstrip("/")


def _path(value: Any, where: str, base: Path) -> Path | None:
    if value is None:
        return None
    return base / Path(_string(value, where)).expanduser()


def _context(raw: Any, index: int, base: Path) -> Context:
    where = f"contexts[{index}]"
    if not isinstance(raw, dict):
        raise ContextFileInvalid(f"{where}: expected a mapping with name and server")
    unknown = sorted(str(k) for k in set(raw) - _CONTEXT_KEYS)
    if unknown:
        raise ContextFileInvalid(f"{where}: unknown key(s) {', '.join(unknown)}")
    return Context(name=_string(raw.get("name"), f"{where}.name"),
                   server=_server(raw.get("server"), f"{where}.server"),
                   token_file=_path(raw.get("token-file"), f"{where}.token-file", base),
                   ca_file=_path(raw.get("ca-file"), f"{where}.ca-file", base))


def parse_context_file(text: str, base: Path = Path(".")) -> ContextFile:
    """The contexts of a context file's text (relative paths resolved against ``base``)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContextFileInvalid(f"not YAML: {str(exc).splitlines()[0]}") from None
    if doc is None:
        return ContextFile((), None)
    if not isinstance(doc, dict):
        raise ContextFileInvalid("expected a mapping with current-context and contexts")
    unknown = sorted(str(k) for k in set(doc) - _TOP_KEYS)
    if unknown:
        raise ContextFileInvalid(f"unknown key(s) {', '.join(unknown)}")
    raw = doc.get("contexts") or []
    if not isinstance(raw, list):
        raise ContextFileInvalid("contexts: expected a list")
    contexts = tuple(_context(c, i, base) for i, c in enumerate(raw))
    names = [c.name for c in contexts]
    if len(set(names)) != len(names):
        raise ContextFileInvalid("contexts: two contexts have the same name")
    current = doc.get("current-context")
    if current is not None:
        current = _string(current, "current-context")
        if current not in names:
            raise ContextFileInvalid(f"current-context: no context named {current!r}")
    return ContextFile(contexts, current)


def render_context_file(file: ContextFile, base: Path) -> str:
    """The text :func:`parse_context_file` reads back as ``file``."""
    def rel(path: Path | None) -> str | None:
        if path is None:
            return None
        return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
    contexts = [{k: v for k, v in {"name": c.name, "server": c.server,
                                   "token-file": rel(c.token_file),
                                   "ca-file": rel(c.ca_file)}.items() if v is not None}
                for c in file.contexts]
    doc: dict[str, Any] = {"current-context": file.current} if file.current else {}
    doc["contexts"] = contexts
    return yaml.safe_dump(doc, sort_keys=False)


def load_context_file(path: Path | None = None) -> ContextFile | None:
    """The context file, or None when there is none."""
    path = path or context_path()
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONTEXT_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileUnusable(f"context file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONTEXT_FILE:
        raise ContextFileInvalid(f"{path}: larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ContextFileInvalid(f"{path}: not UTF-8 text") from None
    try:
        return parse_context_file(text, path.parent)
    except ContextFileInvalid as exc:
        raise ContextFileInvalid(f"{path}: {exc.detail}") from None


def _token_from(context: Context) -> str:
    if context.token_file is None:
        raise SettingsInvalid(f"context {context.name!r} has no token-file and "
                              "UMEC_OPERATOR_TOKEN is not set",
                              hint="set UMEC_OPERATOR_TOKEN or the context's token-file")
    try:
        token = context.token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileUnusable(f"token-file {context.token_file}: {exc}") from None
    if not token:
        raise FileUnusable(f"token-file {context.token_file}: empty")
    return token


def remote_target(settings: Settings) -> Remote | None:
    """The server to talk to, or None for the local database (bootstrap mode)."""
    if "server_url" in settings.model_fields_set:
        if not settings.operator_token:
            raise SettingsInvalid("UMEC_SERVER_URL is set but UMEC_OPERATOR_TOKEN is not",
                                  hint="set UMEC_OPERATOR_TOKEN to the server's operator token")
        return Remote(settings.server_url.rstrip("/"), settings.operator_token,
                      settings.server_ca, "UMEC_SERVER_URL")
    file = load_context_file()
    if file is None or not file.contexts:
        return None
    if file.current is None:
        raise ContextFileInvalid(f"{context_path()}: no current-context")
    context = file.named(file.current)
    assert context is not None  # parse_context_file checked it
    token = settings.operator_token or _token_from(context)
    return Remote(context.server, token, settings.server_ca or context.ca_file,
                  f"context {context.name}")
