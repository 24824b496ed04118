"""``umec sign``, ``umec verify`` and ``umec webhook``: image signing in CI, checks, the webhook."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from umec.cli_attest import Output, print_document
from umec.cli_errors import (
    CliError,
    FileUnusable,
    KeyInvalid,
    SettingsInvalid,
    UsageError,
    checked_log_level,
    load_settings,
    require_readable,
    warn,
)
from umec.cli_keyless import (
    CertificateChain,
    CertificateIdentity,
    CertificateIdentityRegexp,
    CertificateOidcIssuer,
    CertificateOidcIssuerRegexp,
    KeylessFlags,
    TrustedRoot,
    is_keyless,
    keyless_authority,
)
from umec.cli_output import print_rows

if TYPE_CHECKING:
    from admission.core.errors import AdmissionError
    from admission.core.keyless import KeylessAuthority
    from admission.core.reference import ImageReference
    from admission.core.verify import VerifiedSignature
    from keys import PrivateKey, PublicKey
    from umec.settings import Settings

console = Console()
webhook_app = typer.Typer(help="The admission webhook (HTTPS) and its certificates.",
                          invoke_without_command=True)


def _signing_key(source: str) -> PrivateKey:
    """The signing key from a file or env://VAR; a bad one is a usage error (exit 2)."""
    from admission.core.errors import AdmissionError
    from admission.signing.sign import load_signing_key_from
    from keys import KeysError
    try:
        return load_signing_key_from(source)
    except (AdmissionError, KeysError) as exc:
        raise KeyInvalid(exc.detail, hint=exc.hint) from None


def sign(image: Annotated[str, typer.Argument(help="IMAGE[:TAG|@DIGEST]")],
         key: Annotated[str, typer.Option(help="PEM or cosign key file, or env://VAR")],
         recursive: Annotated[bool, typer.Option(help="Sign every manifest of an index")] = False,
         bundle: Annotated[bool, typer.Option(help="Also attach a Sigstore bundle")] = False,
         ) -> None:
    """Sign an image in cosign's format (COSIGN_PASSWORD for encrypted keys)."""
    from admission.service.build import registry_client
    from admission.signing.sign import sign_image
    from umec.configs import registry_config
    settings = load_settings()
    private_key = _signing_key(key)
    ref = _reference(image)

    async def run() -> list[str]:
        async with registry_client(registry_config(settings)) as client:
            return await sign_image(client, ref, private_key, recursive=recursive,
                                    bundle=bundle)
    for digest in asyncio.run(run()):
        console.print(f"signed {digest}")


def _reference(image: str) -> ImageReference:
    """IMAGE parsed; a malformed reference is a usage error (exit 2)."""
    from admission.core.errors import AdmissionError
    from admission.core.reference import parse_reference
    try:
        return parse_reference(image)
    except AdmissionError as exc:
        raise UsageError(exc.detail, hint=exc.hint, check=exc.check) from None


def _public_key(path: Path) -> PublicKey:
    from admission.core.keys_cosign import SigningKeyInvalid, load_verification_key
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileUnusable(f"--key {path}: {exc.strerror or exc}",
                           hint="pass an existing, readable public key file (PEM)") from None
    try:
        return load_verification_key(data, where=str(path))
    except SigningKeyInvalid as exc:
        raise KeyInvalid(exc.detail, hint=exc.hint) from None


def distinct_keys(paths: list[Path]) -> dict[str, PublicKey]:
    """The public keys by file, each key once: a file repeating an earlier key (same
    SubjectPublicKeyInfo, whatever its file name or PEM layout) is warned about and dropped."""
    from admission.core.keys_cosign import key_hint
    keys: dict[str, PublicKey] = {}
    first_file: dict[str, Path] = {}
    for path in paths:
        key = _public_key(path)
        fingerprint = key_hint(key)
        if fingerprint in first_file:
            warn("key.duplicate", f"{path} is the same public key as {first_file[fingerprint]}; "
                                  f"it counts once towards --threshold")
            continue
        first_file[fingerprint] = path
        keys[str(path)] = key
    return keys


def check_threshold(threshold: int, distinct: int) -> None:
    """``--threshold`` must ask for at least one and at most every distinct key given."""
    if threshold < 1:
        raise UsageError(f"--threshold {threshold}: at least one signature must be required",
                         hint="pass --threshold 1 or more")
    if threshold > distinct:
        raise UsageError(f"--threshold {threshold} but only {distinct} distinct key(s) given, "
                         f"so it could never be met",
                         hint=f"pass more distinct --key files or --threshold {distinct} "
                              f"or less")


def _signature_row(s: VerifiedSignature) -> dict[str, str | None]:
    return {"digest": s.digest, "signer": s.key_id, "format": s.kind, "identity": s.identity,
            "reference": s.reference}


def _signer_label(s: VerifiedSignature) -> str:
    """The key file, or for a keyless signer the certificate's subject and issuer (its id is
    ``keyless:<root digest> <issuer> <subject pattern>``)."""
    parts = s.key_id.split(" ", 2)
    if not s.key_id.startswith("keyless:") or len(parts) != 3:
        return s.key_id
    return f"{s.identity or parts[2]} (issuer {parts[1]})"


def _print_verdict(pinned: str, signers: list[VerifiedSignature],
                   failures: list[AdmissionError], output: Output, met: bool) -> None:
    """The signers (and, when the threshold is not met, why the rest failed) on stdout."""
    if output is not Output.table:
        doc = {"image": pinned, "verified": met,
               "signatures": [_signature_row(s) for s in signers],
               "failures": [] if met else [{"check": f.check, "detail": f.detail}
                                           for f in failures]}
        print_document(doc, output)
        return
    console.print(f"image {pinned}", markup=False, soft_wrap=True)
    print_rows([{"digest": s.digest, "key": _signer_label(s), "format": s.kind}
                for s in signers], ("digest", "key", "format"), console=console)
    if not met:
        console.print(f"policy not met: {len({s.key_id for s in signers})} signer(s) verified",
                      markup=False, soft_wrap=True)
        for line in failure_lines(failures):
            console.print(line, markup=False, soft_wrap=True, highlight=False)


def failure_lines(failures: list[AdmissionError]) -> list[str]:
    """One line per failed signature: its check and detail (which names the signature's layer
    or bundle digest and the keys it was checked against), never wrapped; newlines in a
    detail are folded so that a line is one failure."""
    return ["  ✗ " + " ".join(f"{f.check}: {f.detail}".split()) for f in failures]


def _keyless_refusal(pinned: str, authority: KeylessAuthority,
                     failures: list[AdmissionError]) -> CliError:
    """No signature by the keyless identity: the most telling failed check, named."""
    wanted = authority.identities[0].key_id
    telling = [f for f in failures if f.check.startswith("signature.keyless")] or failures
    reasons = "; ".join(f"{f.check}: {f.detail}" for f in telling[:3])
    return CliError(f"{pinned}: no signature by {wanted} verified"
                    f"{': ' + reasons if reasons else ''}",
                    check=telling[0].check if telling else "signature.keyless",
                    hint="sign the image keyless from the expected identity, or check "
                         "--certificate-identity, --certificate-oidc-issuer and the trust "
                         "root")


def verify(image: Annotated[str, typer.Argument(help="IMAGE[:TAG|@DIGEST]")],
           key: Annotated[list[Path] | None, typer.Option(
               help="Public key (PEM); repeatable. Or the keyless flags")] = None,
           threshold: Annotated[int, typer.Option(help="Distinct keys required (1 to the "
                                                  "number of distinct --key)")] = 1,
           certificate_identity: CertificateIdentity = None,
           certificate_identity_regexp: CertificateIdentityRegexp = None,
           certificate_oidc_issuer: CertificateOidcIssuer = None,
           certificate_oidc_issuer_regexp: CertificateOidcIssuerRegexp = None,
           trusted_root: TrustedRoot = None,
           certificate_chain: CertificateChain = None,
           output: Annotated[Output, typer.Option(help="table, json or yaml")] = Output.table,
           ) -> None:
    """Print which keys (or which keyless signer, offline against --trusted-root) signed which
    digest; exit 1 unless THRESHOLD distinct keys (keyless: the identity) signed it."""
    from admission.service.build import registry_client
    from admission.signing.verify import verify_image_signatures
    from umec.configs import registry_config
    flags = KeylessFlags(certificate_identity, certificate_identity_regexp,
                         certificate_oidc_issuer, certificate_oidc_issuer_regexp, trusted_root,
                         certificate_chain)
    paths = key or []
    keyless = is_keyless(paths, flags)  # before reading any file
    check_threshold(threshold, 1 if keyless else len(paths))
    settings = load_settings()
    authority = keyless_authority(flags) if keyless else None
    keys = {} if keyless else distinct_keys(paths)
    check_threshold(threshold, 1 if keyless else len(keys))  # a key given twice counts once
    ref = _reference(image)

    async def run() -> tuple[str, list[VerifiedSignature], list[AdmissionError]]:
        pinned = ref
        async with registry_client(registry_config(settings)) as client:
            if pinned.digest is None:
                pinned = pinned.with_digest((await client.resolve(pinned)).digest)
            signers, failures = await verify_image_signatures(
                client, pinned, keys, authorities=() if authority is None else (authority,))
        return str(pinned), signers, failures
    pinned, signers, failures = asyncio.run(run())
    signed = {s.key_id for s in signers}
    met = len(signed) >= threshold
    _print_verdict(pinned, signers, failures, output, met)
    if not met and authority is not None:
        raise _keyless_refusal(pinned, authority, failures)
    if not met:
        unsigned = ", ".join(k for k in keys if k not in signed) or "-"
        raise CliError(f"{pinned}: {len(signed)} of {threshold} required keys signed it; "
                       f"no valid signature by {unsigned}",
                       check="signature.threshold",
                       hint="sign the image with the missing keys (`umec sign`), or check that "
                            "--key names the signers' public keys")
    if output is Output.table:
        console.print(f"[green]verified[/green]: {len(signed)} "
                      f"{'keyless signer' if keyless else 'key(s)'} signed this digest")


def _check_admission_policies(directory: Path | None) -> None:
    """The webhook's image policies load (else one line, exit 2, before the process starts)."""
    from admission.core.errors import AdmissionError
    from admission.service.policy_dir import load_policy_set
    if directory is not None and not directory.is_dir():
        raise FileUnusable(f"UMEC_ADMISSION_POLICY_DIR {directory}: not a directory")
    try:
        load_policy_set(directory)
    except AdmissionError as exc:
        raise SettingsInvalid(f"UMEC_ADMISSION_POLICY_DIR {directory}: {exc.detail}",
                              hint=exc.hint) from None
    except ValueError as exc:  # a key file outside the directory, or a file not UTF-8
        raise SettingsInvalid(f"UMEC_ADMISSION_POLICY_DIR {directory}: {exc}",
                              hint="fix the policy file it names") from None


def _check_client_auth(settings: Settings) -> None:
    """The webhook authenticates the API server by its client certificate (a readable PEM file
    of CA certificates in UMEC_WEBHOOK_CLIENT_CA), or the operator opted out explicitly: else
    one line, exit 2, before the process starts."""
    from umec.webhook_process import WebhookTlsInvalid, check_client_auth
    require_readable([settings.webhook_client_ca], "UMEC_WEBHOOK_CLIENT_CA")
    try:
        check_client_auth(settings)
    except WebhookTlsInvalid as exc:
        raise SettingsInvalid(exc.detail, hint=exc.hint) from None


@webhook_app.callback()
def webhook(ctx: typer.Context,
            host: Annotated[str, typer.Option(help="Listen address")] = "0.0.0.0",
            port: Annotated[int | None, typer.Option(help="Listen port")] = None) -> None:
    """Run the admission webhook over HTTPS (UMEC_WEBHOOK_TLS_CERT / _KEY), taking reviews
    only from clients with a certificate from UMEC_WEBHOOK_CLIENT_CA (the API server)."""
    if ctx.invoked_subcommand is not None:
        return
    from umec.webhook_process import handover
    settings = load_settings()
    if settings.webhook_tls_cert is None or settings.webhook_tls_key is None:
        raise SettingsInvalid("UMEC_WEBHOOK_TLS_CERT and UMEC_WEBHOOK_TLS_KEY are required",
                              hint="create them with `umec webhook certs --dir DIR` and set "
                                   "both variables")
    checked_log_level(settings)
    require_readable([settings.webhook_tls_cert, settings.webhook_tls_key], "webhook TLS file")
    _check_admission_policies(settings.admission_policy_dir)
    _check_client_auth(settings)
    # Settings are valid; the webhook itself runs in a lean process (see webhook_process).
    handover(host, port or settings.webhook_port)


def _rotate_webhook_certs(service: str, namespace: str, days: int, renew_before_days: int,
                          output: str) -> None:
    """``--rotate``: the serving certificate in the cluster (admission.service.certs)."""
    import json as json_

    import yaml

    from admission.service.certs import KubeObjects, RotationConfig, rotate_webhook_certs
    from umec.bridges import kubernetes_api
    if output not in ("table", "json", "yaml"):
        raise UsageError(f"--output {output}: not one of table, json, yaml")
    if not 0 < renew_before_days < days:
        raise UsageError(f"--renew-before-days {renew_before_days} must be between 0 and "
                         f"--days {days}")
    settings = load_settings()
    api = KubeObjects(kubernetes_api(settings.kubeconfig).api_client)
    result = rotate_webhook_certs(api, RotationConfig(
        namespace=namespace, service=service, days=days, renew_before_days=renew_before_days))
    doc = result.as_dict()
    if output == "json":
        print(json_.dumps(doc))
    elif output == "yaml":
        print(yaml.safe_dump(doc, sort_keys=False), end="")
    else:
        say = functools.partial(console.print, markup=False, soft_wrap=True)
        say(("issued" if result.issued else "kept") + f" serving certificate {result.serial} "
            f"({result.reason}), valid until {result.not_after.isoformat()}")
        say("caBundle patched: " + (", ".join(result.ca_bundle_patched) or "none needed"))
        if result.old_cas_kept:
            say(f"old CA kept in caBundle ({result.old_cas_kept}): {result.replicas}; the "
                "next run drops it once every replica serves the new certificate")
        elif result.replicas:
            say(f"old CA dropped: {result.replicas}")


@webhook_app.command("certs")
def webhook_certs(directory: Annotated[Path | None, typer.Option(
                      "--dir", help="Output directory (not with --rotate)")] = None,
                  service: str = "umec-webhook", namespace: str = "umec-system",
                  apiserver_dir: Annotated[Path | None, typer.Option(
                      help="Absolute directory the API server's files will be installed in "
                           "on the k3s server (default: --dir)")] = None,
                  rotate: Annotated[bool, typer.Option(
                      help="In the cluster (UMEC_KUBECONFIG or in-cluster): re-issue the "
                           "serving certificate in Secret umec-webhook-tls from the CA in "
                           "umec-webhook-ca when due, patch every caBundle, roll the webhook "
                           "pods (deploy/webhook-certs.yaml runs this daily)")] = False,
                  days: Annotated[int, typer.Option(help="--rotate: validity of a new "
                                                    "certificate")] = 90,
                  renew_before_days: Annotated[int, typer.Option(
                      help="--rotate: re-issue when it expires within this")] = 30,
                  output: Annotated[str, typer.Option(help="--rotate: table, json or yaml"
                                                      )] = "table") -> None:
    """Create the serving certificate (and its CA) for the Service, and the API server's
    client certificate (and its dedicated client CA) with the kube-apiserver's admission
    configuration; print where they are, then the caBundle. With --rotate, keep the serving
    certificate in the cluster current instead."""
    from admission.service.certs import create_webhook_certs
    if rotate:
        if directory is not None:
            raise UsageError("--dir and --rotate exclude each other")
        _rotate_webhook_certs(service, namespace, days, renew_before_days, output)
        return
    if directory is None:
        raise UsageError("--dir is required (or --rotate)")
    try:
        certs = create_webhook_certs(directory, service, namespace, apiserver_dir=apiserver_dir)
    except ValueError as exc:
        raise UsageError(f"--apiserver-dir {exc}",
                         hint="pass an absolute path, e.g. /var/lib/rancher/k3s/server/umec"
                         ) from None
    say = functools.partial(console.print, markup=False, soft_wrap=True)
    say(f"serving cert {certs.cert}, key {certs.key} (0600): Secret umec-webhook-tls")
    say(f"client CA {certs.client_ca_cert}: ConfigMap umec-webhook-client-ca, the webhook's "
        f"UMEC_WEBHOOK_CLIENT_CA")
    say(f"API server files: {certs.client_cert}, {certs.client_key} (0600), {certs.kubeconfig}, "
        f"{certs.admission_config}: copy them to {certs.apiserver_dir} on the k3s server and "
        f"start it with --kube-apiserver-arg=admission-control-config-file="
        f"{certs.apiserver_dir / certs.admission_config.name} (deploy/README.md)")
    say(f"keep {certs.ca_key} and {certs.client_ca_key} out of the cluster")
    print(certs.ca_bundle)
