"""``umec webhook`` runs here, in a lean process: no typer/click/rich, and glibc limited to two
malloc arenas (uvicorn's thread pool otherwise grows one arena per thread). The CLI validates
the settings first and then replaces itself with this module (``handover``); the webhook's
memory budget (120 MB on a Raspberry Pi) is what this process uses.

The webhook takes AdmissionReviews only from the kube-apiserver: with ``UMEC_WEBHOOK_CLIENT_CA``
every TLS handshake requires a client certificate issued by that (dedicated) CA, so a peer
without one never reaches the app (:func:`tls_options`). Without it the webhook does not start
unless ``UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED`` is true, which is logged as a warning naming the
risk (docs/decisions.md, "The webhook trusts only the API server (mTLS)").

The serving certificate is reloaded in-process (:class:`ServingCertReloader`): every
``UMEC_WEBHOOK_TLS_RELOAD_SECONDS`` the certificate and key files are read again and a changed,
matching pair is loaded into uvicorn's live ``SSLContext``, so new handshakes serve it while
open connections finish with the old one. The kubelet updates a mounted Secret in place, so the
rotation job (deploy/webhook-certs.yaml) never restarts the pods and needs no right on the
Deployment."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from admission.service.admit import WebhookDeps
    from umec.settings import Settings

HANDOVER = "UMEC_WEBHOOK_HANDOVER"
log = logging.getLogger("umec.webhook")

UNAUTHENTICATED_RISK = (
    "the admission webhook accepts AdmissionReviews from anyone who can reach its port "
    "(UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED=true, no UMEC_WEBHOOK_CLIENT_CA): a forged Pod DELETE "
    "revokes a live pod's tokens and a forged CREATE can record a pod as verified; "
    "development only")


class WebhookTlsInvalid(ValueError):
    """The webhook's TLS cannot be set up as required: no serving certificate, no client CA
    (and no explicit opt-out), or a client CA file without a usable CA certificate. ``hint``
    says what to do."""

    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.detail, self.hint = detail, hint


def check_client_ca(path: Path) -> int:
    """The number of CA certificates in the PEM file ``path``; :class:`WebhookTlsInvalid`
    when it holds none (empty, not PEM) or one that is no CA. ``OSError`` if unreadable."""
    from cryptography import x509
    data = path.read_bytes()
    hint = ("point UMEC_WEBHOOK_CLIENT_CA at the dedicated client CA certificate "
            "(client-ca.crt from `umec webhook certs`)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise WebhookTlsInvalid(f"UMEC_WEBHOOK_CLIENT_CA {path}: no PEM certificate in it",
                                 hint) from None
    for cert in certs:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise WebhookTlsInvalid(f"UMEC_WEBHOOK_CLIENT_CA {path}: "
                                     f"{cert.subject.rfc4514_string()} is not a CA certificate",
                                     hint)
    return len(certs)


def _no_client_ca() -> WebhookTlsInvalid:
    return WebhookTlsInvalid(
        "UMEC_WEBHOOK_CLIENT_CA is not set: the webhook would take AdmissionReviews from anyone "
        "who can reach it",
        "set UMEC_WEBHOOK_CLIENT_CA to client-ca.crt from `umec webhook certs` and give the API "
        "server its client certificate (deploy/README.md); for development only, "
        "UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED=true")


def check_client_auth(settings: Settings) -> None:
    """Before the webhook starts: its client CA is a readable PEM file of CA certificates, or
    the operator opted out explicitly; else :class:`WebhookTlsInvalid` (``OSError`` when the
    file cannot be read)."""
    if settings.webhook_client_ca is not None:
        check_client_ca(settings.webhook_client_ca)
    elif not settings.webhook_allow_unauthenticated:
        raise _no_client_ca()


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options for the webhook: the serving certificate, and with
    ``webhook_client_ca`` a client certificate from that CA required in every handshake.
    Without a client CA: :class:`WebhookTlsInvalid`, unless the operator opted out
    (``webhook_allow_unauthenticated``), which is logged as a warning naming the risk."""
    if settings.webhook_tls_cert is None or settings.webhook_tls_key is None:
        raise WebhookTlsInvalid("UMEC_WEBHOOK_TLS_CERT and UMEC_WEBHOOK_TLS_KEY are required",
                                 "create them with `umec webhook certs --dir DIR` and set "
                                 "both variables")
    options: dict[str, Any] = {"ssl_certfile": str(settings.webhook_tls_cert),
                               "ssl_keyfile": str(settings.webhook_tls_key)}
    if settings.webhook_client_ca is not None:
        options["ssl_ca_certs"] = str(settings.webhook_client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    elif settings.webhook_allow_unauthenticated:
        log.warning(UNAUTHENTICATED_RISK, extra={"check": "webhook.unauthenticated"})
    else:
        raise _no_client_ca()
    return options


class ServingCertReloadFailed(ValueError):
    """The certificate/key files changed but cannot be served (unreadable, not PEM, the key
    is not the certificate's): the pair in force keeps serving."""


def _serving_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """:class:`ServingCertReloadFailed` unless ``key_pem`` is the private key of the first
    certificate in ``cert_pem`` (the kubelet swaps both files at once; a half-written pair is
    never served)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, IndexError) as exc:
        raise ServingCertReloadFailed(f"not a PEM certificate and key: {exc}") from None
    if key.public_key() != leaf.public_key():
        raise ServingCertReloadFailed("the key is not the certificate's key")


class ServingCertReloader:
    """Keeps uvicorn's live ``SSLContext`` serving what the certificate and key files hold.

    :meth:`check` runs on the event loop's thread, where asyncio creates every connection's
    ``SSLObject``: no handshake starts between loading the certificate and its key. The pair
    is checked first, then loaded into a scratch context, and only then into the live one,
    from one in-memory file (``memfd``: the key never touches a disk) holding both."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path, interval: float) -> None:
        self.context, self.cert, self.key, self.interval = context, cert, key, interval
        self.loaded: tuple[bytes, bytes] | None = None
        self.reloads = 0

    def _read(self) -> tuple[bytes, bytes]:
        try:
            return self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise ServingCertReloadFailed(f"{exc.filename}: {exc.strerror}") from None

    def _load(self, context: ssl.SSLContext, pem: bytes) -> None:
        fd = os.memfd_create("umec-webhook-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        except ssl.SSLError as exc:
            raise ServingCertReloadFailed(f"OpenSSL refused the pair: {exc}") from None
        finally:
            os.close(fd)

    def check(self) -> bool:
        """Load the files' pair into the live context if it changed; whether it did."""
        pair = self._read()
        if pair == self.loaded:
            return False
        _serving_pair(*pair)
        pem = pair[0].rstrip(b"\n") + b"\n" + pair[1]
        self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), pem)
        self._load(self.context, pem)
        first, self.loaded = self.loaded is None, pair
        if not first:
            self.reloads += 1
            log.info("serving certificate reloaded from %s", self.cert,
                     extra={"check": "webhook.tls_reloaded"})
        return not first

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled; a failure is logged (the pair in
        force keeps serving) and tried again."""
        while True:
            try:
                self.check()
            except ServingCertReloadFailed as exc:
                log.warning("serving certificate not reloaded: %s", exc,
                            extra={"check": "webhook.tls_reload_failed"})
            await asyncio.sleep(self.interval)


def build_webhook(settings: Settings) -> tuple[FastAPI, WebhookDeps]:
    """The webhook's app: admission's service (the review routes; records in the shared
    database, whose forgetting revokes the pod's tokens in the same transaction), bounded
    bodies and umec's error handlers."""
    from fastapi import FastAPI

    from admission.service.build import AdmissionBridges, build_service
    from kernel.clock import clock_for
    from kernel.requestid import RequestIds
    from kernel.service import running
    from umec.bridges import kubernetes_api, pod_revocation_writer
    from umec.configs import admission_config
    from umec.db import open_engine
    from umec.http_limits import BodyLimits, BodyPolicy, install_error_handlers
    engine = open_engine(settings.resolved_database_url(), settings.database_max_connections)
    service = build_service(admission_config(settings, webhook=True), AdmissionBridges(
        engine, clock_for(engine).now,
        forget_writers=[pod_revocation_writer(settings.token_lifetime_seconds)],
        # Pods' imagePullSecrets and the policy objects through the Kubernetes API (in-cluster
        # service account, or UMEC_KUBECONFIG); otherwise only the docker config and files.
        kube_api=kubernetes_api(settings.kubeconfig)
        if settings.webhook_pull_secrets or settings.admission_policy_crds else None))
    deps = service.parts.webhook
    assert deps is not None  # a webhook config serves the webhook
    app = FastAPI(title="µMEC admission webhook", docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lambda _app: running([service]))
    service.install(app)
    # The webhook's own review limit answers first (its check names the review); this bounds
    # every route and the time to send a body. 16 MiB of bodies in flight fits its memory budget.
    app.add_middleware(BodyLimits, policy=BodyPolicy(
        default_bytes=deps.max_review_bytes + 64 * 1024, budget_bytes=16 << 20,
        seconds=settings.request_body_timeout_seconds))
    app.add_middleware(RequestIds)  # outermost: request ids and the access log
    install_error_handlers(app)
    return app, deps


def handover(host: str, port: int) -> None:
    """Replace the current process with the webhook process (does not return)."""
    env = dict(os.environ)
    env[HANDOVER] = json.dumps({"host": host, "port": port})
    env.setdefault("MALLOC_ARENA_MAX", "2")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "umec.webhook_process"], env)


def main() -> int:
    raw = json.loads(os.environ.pop(HANDOVER, "{}") or "{}")
    # httpx imports its command-line tool when it can, and with it rich, pygments and click
    # (~4 MiB); this process never runs it. A None entry makes that optional import fail.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import uvicorn

    from umec.http_limits import uvicorn_options
    from umec.logs import configure_logging
    from umec.settings import Settings
    settings = Settings()
    configure_logging(settings.log_level)
    try:  # `umec webhook` checked all this; a direct start is checked the same way
        check_client_auth(settings)
        tls = tls_options(settings)
    except WebhookTlsInvalid as exc:
        print(f"error: settings.invalid: {exc.detail} — what to do: {exc.hint}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: file: UMEC_WEBHOOK_CLIENT_CA {exc.filename}: {exc.strerror or exc} — "
              f"what to do: make it a readable file", file=sys.stderr)
        return 2
    app, _ = build_webhook(settings)
    config = uvicorn.Config(app, host=raw.get("host", "0.0.0.0"),
                            port=int(raw.get("port") or settings.webhook_port),
                            log_config=None, **tls, **uvicorn_options())
    config.load()
    assert config.ssl is not None and settings.webhook_tls_cert and settings.webhook_tls_key
    reloader = ServingCertReloader(config.ssl, settings.webhook_tls_cert,
                                   settings.webhook_tls_key, settings.webhook_tls_reload_seconds)
    server = uvicorn.Server(config)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve(server, reloader))
    return 0 if server.started else 3   # uvicorn's STARTUP_FAILURE


async def _serve(server: Any, reloader: ServingCertReloader) -> None:
    task = asyncio.create_task(reloader.run())
    try:
        await server.serve()
    finally:
        task.cancel()


if __name__ == "__main__":
    sys.exit(main())
