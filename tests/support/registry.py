"""A real ``docker-registry`` (Docker Distribution 2.8) on loopback, with and without auth.

``run_registry(workdir, auth=...)`` writes a config with filesystem storage under ``workdir``,
starts ``/usr/bin/docker-registry serve`` on a free 127.0.0.1 port, waits until ``/v2/`` answers
(200, or 401 with auth), yields a :class:`RunningRegistry` and stops the process afterwards.

Auth variants:
- ``"htpasswd"``: Basic auth; docker-registry accepts bcrypt entries only, made with the C
  library's ``crypt`` (libxcrypt supports ``$2b$``), so neither apache2-utils nor a bcrypt wheel
  is needed.
- ``"token"``: bearer tokens from :class:`TokenServer`, a tiny HTTP server in this process that
  checks Basic credentials (or an identity token via the OAuth2 refresh grant) and issues ES256
  JWTs whose ``x5c`` header carries a self-signed certificate the registry trusts through
  ``rootcertbundle``.

:class:`ScriptedServer` is the opposite of the real thing: an HTTP server whose answers a test
scripts (lying digests, 503 then success, hanging, oversized bodies).

The fixtures ``registry``, ``basic_registry`` and ``token_registry`` start one registry per test
module that uses them (tests/conftest.py loads this module as a plugin).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import secrets
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keys import KeyKind, generate_private_key
from umec.localregistry import LocalRegistry, registry_available

SERVICE = "umec-test-registry"
ISSUER = "umec-test-token-issuer"
USERS = {"alice": "wonderland", "bob": "builder"}


requires_registry = pytest.mark.skipif(
    not registry_available(), reason="docker-registry not installed (scripts/setup.sh installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # removed in Python 3.13; 3.11 is the project's version

        # Cost 4: the minimum; the registry checks it on every request and tests are timed.
        hashed = crypt.crypt(password, "$2b$04$" + crypt.mksalt(crypt.METHOD_BLOWFISH)[7:])
    if not hashed or not hashed.startswith("$2b$"):
        pytest.skip("the C library's crypt() has no bcrypt; cannot write an htpasswd file")
    return hashed


@dataclass
class RunningRegistry:
    host: str  # "127.0.0.1:<port>", what goes into image references
    root: Path  # storage root directory
    process: subprocess.Popen[bytes]
    log: Path
    token_server: TokenServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def blob_path(self, digest: str) -> Path:
        """Where docker-registry keeps the bytes of ``digest`` (to corrupt them on purpose)."""
        hexpart = digest.split(":", 1)[1]
        return self.root / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


class TokenServer:
    """Issues registry bearer tokens (docker token spec) to USERS, counting what it issued."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None,
                 identity_tokens: dict[str, str] | None = None) -> None:
        self.users = dict(USERS if users is None else users)
        self.identity_tokens = dict(identity_tokens or {})  # refresh token → user
        self.issued: list[dict[str, Any]] = []
        self.key = generate_private_key(KeyKind.EC_P256)
        assert isinstance(self.key, ec.EllipticCurvePrivateKey)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "umec test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = server._basic_user(self.headers.get("Authorization", ""))
                self._answer(user, query.get("scope", []))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                user = server.identity_tokens.get(form.get("refresh_token", [""])[0])
                self._answer(user, " ".join(form.get("scope", [])).split())

            def _answer(self, user: str | None, scopes: list[str]) -> None:
                if user is None:
                    body, status = b'{"details":"authentication required"}', 401
                else:
                    body, status = json.dumps(server._token(user, scopes)).encode(), 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def _basic_user(self, header: str) -> str | None:
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if self.users.get(user) == password else None

    def _token(self, user: str, scopes: list[str]) -> dict[str, Any]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "iat": now, "nbf": now - 5,
                  "exp": now + 300, "jti": secrets.token_hex(8), "access": access}
        der = self.cert.public_bytes(serialization.Encoding.DER)
        token = jwt.encode(claims, self.key, algorithm="ES256",
                           headers={"x5c": [base64.b64encode(der).decode()]})
        self.issued.append({"user": user, "scopes": scopes})
        return {"token": token, "access_token": token, "expires_in": 300}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _auth_config(workdir: Path, auth: str, token_server: TokenServer | None) -> list[str]:
    if auth == "htpasswd":
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in USERS.items()))
        return ["auth:", "  htpasswd:", "    realm: umec-test", f"    path: {htpasswd}"]
    if auth == "token":
        assert token_server is not None
        return ["auth:", "  token:", f"    realm: {token_server.realm}",
                f"    service: {SERVICE}", f"    issuer: {ISSUER}",
                f"    rootcertbundle: {token_server.cert_path}"]
    return []


@contextlib.contextmanager
def run_registry(workdir: Path, *, auth: str = "none") -> Iterator[RunningRegistry]:
    """Start docker-registry (auth: "none" | "htpasswd" | "token"); stop it on exit."""
    if not registry_available():
        pytest.skip("docker-registry not installed (scripts/setup.sh installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    token_server = TokenServer(workdir) if auth == "token" else None
    try:
        with LocalRegistry(workdir, extra_config=_auth_config(workdir, auth, token_server)) as reg:
            assert reg.process is not None
            yield RunningRegistry(reg.host, reg.root, reg.process, reg.log, token_server)
    finally:
        if token_server is not None:
            token_server.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """An anonymous registry shared by the test module; tests use their own repository names."""
    with run_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry-basic"), auth="htpasswd") as running:
        yield running


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry-token"), auth="token") as running:
        yield running


# -- a scripted, misbehaving registry ---------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes]
HANG: Reply = (-1, {}, b"")  # sentinel reply: keep the connection open and never answer


@dataclass
class ScriptedServer:
    """Answers each request with ``script(method, path, headers) -> Reply``; logs requests."""

    script: Callable[[str, str, dict[str, str]], Reply]
    tls: ssl.SSLContext | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    peers: set[int] = field(default_factory=set)  # client ports seen: one per TCP connection

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.requests.append((self.command, self.path))
                server.peers.add(self.client_address[1])
                status, headers, body = server.script(self.command, self.path,
                                                      dict(self.headers.items()))
                if status == -1:
                    server.stop.wait(30)
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def scripted(script: Callable[[str, str, dict[str, str]], Reply],
             tls: ssl.SSLContext | None = None) -> Iterator[ScriptedServer]:
    server = ScriptedServer(script, tls)
    try:
        yield server
    finally:
        server.close()


def loopback_tls(workdir: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (written to ``workdir/ca.pem``) and a server context for 127.0.0.1."""
    import ipaddress

    now = datetime.datetime.now(datetime.UTC)
    ca_key = generate_private_key(KeyKind.EC_P256)
    leaf_key = generate_private_key(KeyKind.EC_P256)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "umec test registry CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    workdir.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (workdir / "ca.pem", workdir / "server.pem",
                                    workdir / "server.key")
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return ca_path, context
