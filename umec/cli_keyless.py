"""cosign's keyless verification flags for ``umec verify`` and ``umec verify-attestation``.

``--certificate-identity`` or ``--certificate-identity-regexp`` (exactly one), with
``--certificate-oidc-issuer`` or ``--certificate-oidc-issuer-regexp`` (exactly one), checked
offline against trust material the operator gives, never fetched (no TUF here):

- ``--trusted-root FILE``: a Sigstore ``trusted_root.json`` (as ``cosign verify --trusted-root``
  takes it since 2.4, and as an ImagePolicy's ``keyless.trustedRoot`` holds it);
- ``--certificate-chain FILE``: PEM Fulcio CA certificates (intermediates and root), which then
  replace the trusted root's CAs; the Rekor key comes from ``--trusted-root``, else from the file
  ``SIGSTORE_REKOR_PUBLIC_KEY`` names, as cosign reads it.

Either way the material becomes one trusted-root document, loaded by the webhook's own loader
(:func:`admission.core.keyless.parse_trusted_root`), and the signatures are verified by the
webhook's functions: this module only turns flags into a
:class:`admission.core.keyless.KeylessAuthority`.

Exactly one mode: ``--key`` or the keyless flags. Neither, both, or an incomplete keyless set is
a usage error (exit 2) before any file or registry is read.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from umec.cli_errors import FileUnusable, UsageError

if TYPE_CHECKING:
    from admission.core.keyless import KeylessAuthority

REKOR_KEY_ENV = "SIGSTORE_REKOR_PUBLIC_KEY"
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"

CertificateIdentity = Annotated[str | None, typer.Option(
    help="Keyless: the signer's certificate subject (SAN email or URI), exact")]
CertificateIdentityRegexp = Annotated[str | None, typer.Option(
    help="Keyless: a regular expression searched for in the certificate subject (anchor it "
         "with ^…$)")]
CertificateOidcIssuer = Annotated[str | None, typer.Option(
    help="Keyless: the OIDC issuer in the certificate, exact "
         "(e.g. https://token.actions.githubusercontent.com)")]
CertificateOidcIssuerRegexp = Annotated[str | None, typer.Option(
    help="Keyless: a regular expression searched for in the certificate's OIDC issuer")]
TrustedRoot = Annotated[Path | None, typer.Option(
    help="Keyless: Sigstore trusted_root.json (Fulcio CAs, Rekor keys), checked offline")]
CertificateChain = Annotated[Path | None, typer.Option(
    help="Keyless: PEM Fulcio CA certificates (intermediates, root) instead of the trusted "
         "root's CAs; Rekor's key from --trusted-root or SIGSTORE_REKOR_PUBLIC_KEY")]

_HINT = ("verify with --key PUB, or keyless with --certificate-identity[-regexp], "
         "--certificate-oidc-issuer[-regexp] and --trusted-root FILE (or --certificate-chain)")


@dataclass(frozen=True)
class KeylessFlags:
    """The keyless flags as given (None: not given)."""

    identity: str | None = None
    identity_regexp: str | None = None
    issuer: str | None = None
    issuer_regexp: str | None = None
    trusted_root: Path | None = None
    certificate_chain: Path | None = None

    def given(self) -> list[str]:
        """The flags given, by their command-line names."""
        names = ("--certificate-identity", "--certificate-identity-regexp",
                 "--certificate-oidc-issuer", "--certificate-oidc-issuer-regexp",
                 "--trusted-root", "--certificate-chain")
        values = (self.identity, self.identity_regexp, self.issuer, self.issuer_regexp,
                  self.trusted_root, self.certificate_chain)
        return [name for name, value in zip(names, values, strict=True) if value is not None]


def _one_of(exact: str | None, pattern: str | None, name: str) -> tuple[str, bool]:
    if exact is not None and pattern is not None:
        raise UsageError(f"--{name} and --{name}-regexp exclude each other", hint=_HINT)
    if exact is None and pattern is None:
        raise UsageError(f"keyless verification needs --{name} or --{name}-regexp",
                         hint=_HINT)
    return (exact, False) if exact is not None else (str(pattern), True)


def is_keyless(keys: list[Path], flags: KeylessFlags) -> bool:
    """Which mode: keyless (True) or by key (False); neither or both is a usage error."""
    given = flags.given()
    if keys and given:
        raise UsageError(f"--key and {', '.join(given)} exclude each other: verify by key or "
                         f"keyless, not both", hint=_HINT)
    if not keys and not given:
        raise UsageError("no verification material: pass --key or the keyless flags",
                         hint=_HINT)
    if given:
        _one_of(flags.identity, flags.identity_regexp, "certificate-identity")
        _one_of(flags.issuer, flags.issuer_regexp, "certificate-oidc-issuer")
        if flags.trusted_root is None and flags.certificate_chain is None:
            raise UsageError("keyless verification needs --trusted-root FILE (or "
                             "--certificate-chain FILE): umec verifies offline and fetches no "
                             "trust root", hint="pass the trusted_root.json your Sigstore "
                                                "instance publishes (`cosign trusted-root "
                                                "create`, or its TUF repository)")
    return bool(given)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileUnusable(f"{what} {path}: {exc.strerror or exc}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chain_entry(path: Path) -> dict[str, Any]:
    """--certificate-chain as a trusted root's certificate authority."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    try:
        certs = x509.load_pem_x509_certificates(_read(path, "--certificate-chain"))
    except ValueError as exc:
        raise FileUnusable(f"--certificate-chain {path}: not PEM certificates: {exc}",
                           hint="pass the Fulcio CA chain as PEM (intermediates, then the "
                                "root)") from None
    return {"certChain": {"certificates": [{"rawBytes": _b64(c.public_bytes(Encoding.DER))}
                                           for c in certs]}}


def _rekor_entry() -> dict[str, Any]:
    """The Rekor key from SIGSTORE_REKOR_PUBLIC_KEY (a PEM file), as a trusted root's tlog."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_public_key,
    )
    name = os.environ.get(REKOR_KEY_ENV)
    if not name:
        raise UsageError("--certificate-chain without --trusted-root needs Rekor's public key",
                         hint=f"pass --trusted-root FILE, or set {REKOR_KEY_ENV} to Rekor's "
                              f"PEM public key file, as for cosign")
    try:
        key = load_pem_public_key(_read(Path(name), REKOR_KEY_ENV))
    except ValueError as exc:
        raise FileUnusable(f"{REKOR_KEY_ENV} {name}: not a PEM public key: {exc}") from None
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return {"publicKey": {"rawBytes": _b64(spki)}}


def _trust_document(flags: KeylessFlags) -> bytes:
    """The trusted root the flags describe, as the bytes the webhook's loader reads."""
    if flags.trusted_root is not None:
        raw = _read(flags.trusted_root, "--trusted-root")
        if flags.certificate_chain is None:
            return raw
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            raise FileUnusable(f"--trusted-root {flags.trusted_root}: not a JSON object")
    else:
        doc = {"mediaType": TRUSTED_ROOT_MEDIA_TYPE, "tlogs": [_rekor_entry()]}
    assert flags.certificate_chain is not None
    doc["certificateAuthorities"] = [_chain_entry(flags.certificate_chain)]
    return json.dumps(doc).encode()


def keyless_authority(flags: KeylessFlags) -> KeylessAuthority:
    """The trust root and the one identity the flags name (call :func:`is_keyless` first)."""
    from admission.core.keyless import KeylessAuthority, TrustRootInvalid, parse_trusted_root
    from admission.core.verify import KeylessIdentity
    identity, identity_re = _one_of(flags.identity, flags.identity_regexp,
                                    "certificate-identity")
    issuer, issuer_re = _one_of(flags.issuer, flags.issuer_regexp, "certificate-oidc-issuer")
    try:
        wanted = KeylessIdentity(identity, issuer, identity_regexp=identity_re,
                                 issuer_regexp=issuer_re)
    except ValueError as exc:
        raise UsageError(str(exc), hint="fix the --certificate-identity/--certificate-oidc-"
                                        "issuer value (Python regular expression syntax)"
                         ) from None
    where = flags.trusted_root or flags.certificate_chain
    try:
        root = parse_trusted_root(_trust_document(flags))
    except TrustRootInvalid as exc:
        raise FileUnusable(f"{where}: {exc.detail}", hint=exc.hint, check=exc.check) from None
    return KeylessAuthority(root, (wanted,))
