"""Errors of the ``umec`` command line: typed, mapped in one place to one stderr line and an exit
code, never a traceback.

Every failure a command meets ends in :func:`as_cli_error`, called by :class:`UmecGroup` (the
``umec`` app's click group) around every subcommand: a :class:`kernel.errors.CheckedError` of any
domain (:class:`CliError` is one too) already names its check and what to do. click's own usage
errors (a missing option, a file that does not exist) are cut to one line by the same group.
The line is::

    error: <check>: <detail> — what to do: <hint>

Exit codes (README, "Command line"): 0 done; 1 a check failed, a request was refused or a service
the command needs could not be reached; 2 a usage error: arguments, options, settings
(``UMEC_*``), unreadable or malformed input files; 3 ``umec agent --once`` only: the TPM is in
dictionary-attack lockout (``umec.agent_process``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import typer
from typer.core import TyperGroup

from kernel.errors import CheckedError

if TYPE_CHECKING:
    from umec.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(CheckedError):
    """A command failed; ``check`` names what failed, ``hint`` what to do about it."""

    check = "failed"
    hint = "see the detail"
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, detail: str, hint: str | None = None, check: str | None = None) -> None:
        super().__init__(detail, check=check or None, hint=hint or None)

    def message(self) -> str:
        return self.detail

    def line(self) -> str:
        """The one line printed on stderr."""
        text = f"error: {self.check}: {self.detail} — what to do: {self.hint}"
        return re.sub(r"\s*\n\s*", " ", text)


class UsageError(CliError):
    """The arguments or options cannot work (e.g. ``--threshold 0``)."""

    check = "usage"
    hint = "see `umec COMMAND --help`"
    exit_code = EXIT_USAGE


class SettingsInvalid(CliError):
    """A ``UMEC_*`` variable or the ``UMEC_CONFIG`` file holds a bad value."""

    check = "settings.invalid"
    hint = "fix that UMEC_* environment variable (or the key in the file UMEC_CONFIG names)"
    exit_code = EXIT_USAGE


class FileUnusable(CliError):
    """A file the command was given cannot be read or written."""

    check = "file"
    hint = "check the path, and that this user may read it (or write it, for an output)"
    exit_code = EXIT_USAGE


class KeyInvalid(CliError):
    """A key file holds no key of a supported kind."""

    check = "key.invalid"
    hint = ("pass a supported PEM or cosign key (ECDSA P-256, RSA >= 2048, Ed25519), e.g. "
            "cosign.pub (-----BEGIN PUBLIC KEY-----)")
    exit_code = EXIT_USAGE


class ServiceUnreachable(CliError):
    """A database, registry or server the command needs did not answer."""

    check = "service.unreachable"
    hint = "check that it runs and that its address in the settings is right"


class NotFound(CliError):
    """The named object (policy, node) does not exist."""

    check = "not_found"
    hint = "list what exists (e.g. `umec policy list`, `umec nodes`)"


class InternalError(CliError):
    """An exception no check anticipated: a bug, reported without its traceback."""

    check = "internal"
    hint = "this is a bug in umec: report it with the command and this line"


def load_settings() -> Settings:
    """The process settings, or :class:`SettingsInvalid` naming each bad variable."""
    from pydantic import ValidationError

    from umec.settings import Settings
    try:
        return Settings()
    except ValidationError as exc:
        bad = "; ".join(
            f"UMEC_{'_'.join(str(part) for part in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors())
        raise SettingsInvalid(bad) from None
    except ValueError as exc:  # the UMEC_CONFIG file itself (umec.settings._YamlFileSource)
        raise SettingsInvalid(str(exc)) from None


def checked_log_level(settings: Settings) -> str:
    """UMEC_LOG_LEVEL, checked before anything starts (DEBUG, INFO, WARNING, ERROR)."""
    import logging
    if not isinstance(logging.getLevelName(settings.log_level.upper()), int):
        raise SettingsInvalid(f"UMEC_LOG_LEVEL: unknown level {settings.log_level!r}",
                              hint="set UMEC_LOG_LEVEL to DEBUG, INFO, WARNING or ERROR")
    return settings.log_level


def require_readable(paths: Sequence[Path | None], what: str) -> None:
    """Every path names a readable regular file, or :class:`FileUnusable` names the first."""
    for path in paths:
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise FileUnusable(f"{what} {path}: {exc.strerror or exc}") from None


def _from_os_error(exc: OSError) -> CliError:
    if exc.filename is not None:
        return FileUnusable(f"{exc.filename}: {exc.strerror or exc}")
    return ServiceUnreachable(f"{type(exc).__name__}: {exc}")


def _from_library(exc: Exception) -> CliError | None:
    """Database and HTTP client failures, imported only when one happened."""
    module = type(exc).__module__
    if module.startswith("sqlalchemy"):
        from sqlalchemy.exc import ArgumentError, DBAPIError
        if isinstance(exc, ArgumentError):
            return SettingsInvalid(f"UMEC_DATABASE_URL: {exc}")
        if isinstance(exc, DBAPIError):
            return ServiceUnreachable(
                f"database: {str(exc.orig or exc).splitlines()[0]}", check="database.unreachable",
                hint="check UMEC_DATABASE_URL and that the database runs and accepts this user")
    if module.startswith("httpx"):
        import httpx
        if isinstance(exc, httpx.TransportError):
            where = exc.request.url if _has_request(exc) else "server"
            return ServiceUnreachable(f"{where}: {type(exc).__name__}: {exc}")
    return None


def _has_request(exc: Any) -> bool:
    try:
        exc.request  # noqa: B018 - httpx raises RuntimeError when the error has no request
    except RuntimeError:
        return False
    return True


def as_cli_error(exc: Exception) -> CliError:
    """The typed CLI error for any exception a command raised (the one central mapping)."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, OSError):
        return _from_os_error(exc)
    mapped = _from_library(exc)
    if mapped is not None:
        return mapped
    if isinstance(exc, CheckedError):  # attest, admission, keys, mec_api: check and hint named
        return CliError(exc.detail, hint=exc.hint, check=exc.check)
    return InternalError(f"{type(exc).__name__}: {exc}")


def report(error: CliError) -> None:
    """Write the error's one line on stderr."""
    typer.echo(error.line(), err=True)


def warn(check: str, detail: str) -> None:
    """One warning line on stderr; the command goes on."""
    typer.echo(re.sub(r"\s*\n\s*", " ", f"warning: {check}: {detail}"), err=True)


def _usage_line(exc: typer.TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "umec"
    return UsageError(exc.format_message(), hint=f"see `{command} --help`").line()


def _is_help(exc: typer.TyperException) -> bool:
    """`umec` or `umec policy` alone: the group's help, which is no error."""
    return type(exc).__name__ == "NoArgsIsHelpError"


def plain_help(command: Any) -> None:
    """``--help`` of ``command`` and every subcommand as click's plain text, not rich's panels:
    for output that is not a terminal (a pipe, a file), where box-drawing characters are noise
    to ``grep`` and ``less`` (typer draws rich panels whatever stdout is). typer renders plain
    help when a command's ``rich_markup_mode`` is None."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)


class UmecGroup(TyperGroup):
    """The ``umec`` click group: every error of every subcommand ends as one stderr line."""

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored) click Context
        try:
            return super().invoke(ctx)
        # BrokenPipeError: the reader left (`umec ... | head`); typer's click ends quietly
        # (exit 1), where mapping it would print "service.unreachable".
        except (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError):
            raise
        except Exception as exc:  # the one place every command's failure is mapped
            error = as_cli_error(exc)
            report(error)
            raise typer.Exit(error.exit_code) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        if not sys.stdout.isatty():
            plain_help(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        except typer.TyperException as exc:  # click's usage errors: one line, not a panel
            if _is_help(exc):
                exc.show()  # type: ignore[attr-defined]
            else:
                typer.echo(_usage_line(exc), err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted — what to do: run the command again", err=True)
            sys.exit(EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)
