"""The two ways ``umec nodes|policy|tokens`` reach the fleet, answering with the same documents.

:class:`RemoteBackend` calls the server's operator routes (``/attest/v1``, bearer operator
token, TLS verified with the configured CA); :class:`LocalBackend` opens the database and calls
the same :mod:`attest.service.operator` functions the routes call (``tokens rotate-key``: the
token service's ``/tokens/v1`` route, or :func:`mec_api.tokens.keyring.rotate_token_key` on the
data directory). Remote is the normal mode;
local is for bootstrap only (no server yet, or recovery on the server host), used when neither
``UMEC_SERVER_URL`` nor a context file names a server (:mod:`umec.cli_contexts`).

A server's refusal (problem+json) becomes the CLI's one stderr line with the server's check,
detail and hint (exit 1); a certificate the CA does not verify is ``server.tls``.
"""

from __future__ import annotations

import base64
import ssl
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from umec.cli_contexts import Remote, remote_target
from umec.cli_errors import CliError, ServiceUnreachable, UsageError, load_settings

if TYPE_CHECKING:
    import httpx

    from attest.service.context import AttestContext
    from attest.service.policies import PolicyTrust
    from umec.settings import Settings

Doc = dict[str, Any]


class Backend(Protocol):
    def nodes(self) -> list[Doc]: ...
    def node(self, name: str) -> Doc: ...
    def ack(self, name: str) -> Doc: ...
    def remove(self, name: str) -> Doc: ...
    def rename(self, old: str, new: str) -> Doc: ...
    def policies(self) -> list[Doc]: ...
    def policy(self, name: str) -> Doc: ...
    def policy_version(self, name: str, version: int) -> Doc: ...
    def history(self, name: str) -> list[Doc]: ...
    def apply(self, raw: bytes) -> Doc: ...
    def rollback(self, name: str, to: int) -> Doc: ...
    def from_node(self, node: str, node_class: str | None, event_log: bytes | None,
                  ima_list: bytes | None) -> Doc: ...
    def remove_policy(self, name: str) -> Doc: ...
    def rotate_token_key(self, overlap_seconds: float) -> str: ...


class ServerRefused(CliError):
    """The server answered with a problem: its check, detail and hint."""


class ServerTls(CliError):
    check = "server.tls"
    hint = ("give the CA that signed the server's certificate: UMEC_SERVER_CA, or the "
            "context's ca-file")


class LocalBackend:
    """The database of this host's settings (bootstrap mode)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def ctx(self) -> AttestContext:
        from attest.service.context import AttestConfig, AttestContext
        from kernel.clock import clock_for
        from umec.bridges import RevokeInTransaction
        from umec.db import open_database
        sessions = open_database(self.settings.resolved_database_url())[1]
        # The same in-transaction writer as the server's: a removal or rename commits its
        # node revocation with it, dated by the clock every replica shares.
        return AttestContext(
            config=AttestConfig(), sessions=sessions, sign_result=lambda claims: "",
            now=clock_for(sessions.kw["bind"]).now,
            change_writers=[RevokeInTransaction(self.settings.token_lifetime_seconds)])

    def trust(self) -> PolicyTrust:
        from attest.service.policies import PolicyTrust
        from umec.configs import policy_signers
        return PolicyTrust(policy_signers(self.settings), self.settings.policy_threshold)

    def nodes(self) -> list[Doc]:
        from attest.service.fleet import fleet_summaries
        return fleet_summaries(self.ctx.sessions)

    def node(self, name: str) -> Doc:
        from attest.service.operator import node_detail
        return node_detail(self.ctx.sessions, name)

    def ack(self, name: str) -> Doc:
        from attest.service.operator import acknowledge
        return acknowledge(self.ctx, name)

    def remove(self, name: str) -> Doc:
        from attest.service.operator import remove_node
        return remove_node(self.ctx, name)

    def rename(self, old: str, new: str) -> Doc:
        from attest.service.operator import rename_node
        return rename_node(self.ctx, old, new)

    def policies(self) -> list[Doc]:
        from attest.service.operator import policy_list
        return policy_list(self.ctx.sessions)

    def policy(self, name: str) -> Doc:
        from attest.service.operator import policy_show
        return policy_show(self.ctx.sessions, name)

    def policy_version(self, name: str, version: int) -> Doc:
        from attest.service.operator import policy_version
        return policy_version(self.ctx.sessions, name, version)

    def history(self, name: str) -> list[Doc]:
        from attest.service.operator import policy_history
        return policy_history(self.ctx.sessions, name)

    def apply(self, raw: bytes) -> Doc:
        from attest.service.operator import apply_policy
        return apply_policy(self.ctx.sessions, raw, self.trust())

    def rollback(self, name: str, to: int) -> Doc:
        from attest.service.operator import rollback_document
        return rollback_document(self.ctx.sessions, name, to, self.trust())

    def from_node(self, node: str, node_class: str | None, event_log: bytes | None,
                  ima_list: bytes | None) -> Doc:
        from attest.service.operator import draft_from_node
        return draft_from_node(self.ctx.sessions, node, node_class, event_log, ima_list)

    def remove_policy(self, name: str) -> Doc:
        from attest.service.operator import remove_policy
        return remove_policy(self.ctx.sessions, name)

    def rotate_token_key(self, overlap_seconds: float) -> str:
        from mec_api.tokens.keyring import TooManyKeys, rotate_token_key
        directory = self.settings.data_dir / "keys" / "access-tokens"
        try:
            return rotate_token_key(directory, overlap_seconds,
                                    self.settings.token_lifetime_seconds)
        except TooManyKeys as exc:
            raise CliError(str(exc), check="tokens.rotate_too_many",
                           hint="wait until an earlier key's overlap ends") from None
        except OSError as exc:
            raise CliError(f"{directory}: {exc.strerror or exc}", check="tokens.key_directory",
                           hint="run it as the server's user on the server host") from None
        except ValueError as exc:
            raise UsageError(str(exc), hint="pass --overlap-seconds of at least the token "
                                            "lifetime (UMEC_TOKEN_LIFETIME_SECONDS)") from None


def _segment(value: str) -> str:
    return quote(value, safe="")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


class RemoteBackend:
    """The server's operator routes."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    @cached_property
    def client(self) -> httpx.Client:
        import httpx
        verify: ssl.SSLContext | bool = True
        if self.remote.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(self.remote.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ServerTls(f"CA file {self.remote.ca_file}: {exc}") from None
        return httpx.Client(base_url=self.remote.server + "/attest/v1", verify=verify,
                            timeout=30, headers={
                                "Authorization": f"Bearer {self.remote.token}",
                                "User-Agent": "umec-cli"})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx
        try:
            resp = self.client.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise self._connect_error(exc) from None
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"{self.remote.server}: {type(exc).__name__}: {exc}",
                                     hint=f"check that the server runs ({self.remote.source})"
                                     ) from None
        if resp.status_code >= 400:
            raise self._refusal(resp)
        return resp.json()

    def _connect_error(self, exc: Exception) -> CliError:
        cause = exc.__cause__ or exc.__context__
        text = str(exc)
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            ca = self.remote.ca_file or "the system trust store"
            return ServerTls(f"{self.remote.server}: its certificate is not verified by {ca} "
                             f"({text})")
        return ServiceUnreachable(f"{self.remote.server}: {text}",
                                  hint=f"check that the server runs and the URL "
                                       f"({self.remote.source}) is right")

    def _refusal(self, resp: httpx.Response) -> CliError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "check" not in body:
            return ServerRefused(f"{self.remote.server} answered HTTP {resp.status_code}",
                                 check=f"http.{resp.status_code}",
                                 hint="check that the URL names a umec server")
        return ServerRefused(str(body.get("detail") or body.get("error_description")),
                             check=str(body["check"]), hint=str(body.get("hint") or ""))

    def nodes(self) -> list[Doc]:
        return list(self._call("GET", "/nodes"))

    def node(self, name: str) -> Doc:
        return dict(self._call("GET", f"/nodes/{_segment(name)}"))

    def ack(self, name: str) -> Doc:
        return dict(self._call("POST", f"/nodes/{_segment(name)}/ack"))

    def remove(self, name: str) -> Doc:
        return dict(self._call("DELETE", f"/nodes/{_segment(name)}"))

    def rename(self, old: str, new: str) -> Doc:
        return dict(self._call("POST", f"/nodes/{_segment(old)}/rename", json={"name": new}))

    def policies(self) -> list[Doc]:
        return list(self._call("GET", "/policies"))

    def policy(self, name: str) -> Doc:
        return dict(self._call("GET", f"/policies/{_segment(name)}"))

    def policy_version(self, name: str, version: int) -> Doc:
        return dict(self._call("GET", f"/policies/{_segment(name)}/versions/{version}"))

    def history(self, name: str) -> list[Doc]:
        return list(self._call("GET", f"/policies/{_segment(name)}/history"))

    def apply(self, raw: bytes) -> Doc:
        return dict(self._call("POST", "/policies", json={"document": raw.decode()}))

    def rollback(self, name: str, to: int) -> Doc:
        return dict(self._call("GET", f"/policies/{_segment(name)}/rollback",
                               params={"to": to}))

    def from_node(self, node: str, node_class: str | None, event_log: bytes | None,
                  ima_list: bytes | None) -> Doc:
        return dict(self._call("POST", "/policies/from-node", json={
            "node": node, "node_class": node_class, "event_log": _b64(event_log),
            "ima_list": _b64(ima_list)}))

    def remove_policy(self, name: str) -> Doc:
        return dict(self._call("DELETE", f"/policies/{_segment(name)}"))

    def rotate_token_key(self, overlap_seconds: float) -> str:
        # The token service's route, outside /attest/v1: an absolute URL is not merged.
        answer = self._call("POST", f"{self.remote.server}/tokens/v1/signing-key/rotate",
                            json={"overlap_seconds": overlap_seconds})
        return str(answer["active"])


def backend() -> Backend:
    """The server when one is configured, else the local database."""
    settings = load_settings()
    remote = remote_target(settings)
    return LocalBackend(settings) if remote is None else RemoteBackend(remote)
