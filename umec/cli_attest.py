"""``umec keys generate``, ``umec attest``, ``umec verify-attestation``, ``umec sbom`` and
``umec provenance``: keys, SBOMs and provenance for CI, with cosign's flags and formats
(:mod:`admission.signing.keypair`, :mod:`admission.signing.attest`,
:mod:`admission.signing.sbom`, :mod:`admission.signing.provenance`).

Exit codes as every ``umec`` command (``umec.cli_errors``): 0 done, 1 a check failed (no
attestation verified, a registry refused), 2 a usage error (a bad flag, an unreadable file).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from umec.cli_errors import CliError, FileUnusable, KeyInvalid, UsageError, load_settings
from umec.cli_keyless import (
    CertificateChain,
    CertificateIdentity,
    CertificateIdentityRegexp,
    CertificateOidcIssuer,
    CertificateOidcIssuerRegexp,
    KeylessFlags,
    TrustedRoot,
    is_keyless,
)

if TYPE_CHECKING:
    from admission.core.attestations import EnvelopeVerdict
    from keys import PrivateKey, PublicKey

console = Console()
keys_app = typer.Typer(help="Image signing key pairs, as cosign makes them.",
                       no_args_is_help=True)
PASSWORD_ENV = "COSIGN_PASSWORD"


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


class SbomFormat(StrEnum):
    spdx = "spdx"
    cyclonedx = "cyclonedx"


class CiKind(StrEnum):
    none = "none"
    github = "github"
    gitlab = "gitlab"


# --- keys generate ------------------------------------------------------------------------

def _new_password() -> bytes:
    """cosign's order: ``COSIGN_PASSWORD`` (even empty), else asked twice on a terminal, else
    everything piped on stdin (as is: ``echo -n``)."""
    value = os.environ.get(PASSWORD_ENV)
    if value is not None:
        return value.encode()
    if sys.stdin.isatty():
        first = getpass.getpass("Enter password for private key: ")
        if getpass.getpass("Enter password for private key again: ") != first:
            raise UsageError("passwords do not match", check="key.password",
                             hint="run it again and type the same password twice, or set "
                                  "COSIGN_PASSWORD")
        return first.encode()
    return sys.stdin.buffer.read()


@keys_app.command("generate")
def keys_generate(
        output_key_prefix: Annotated[str, typer.Option(
            help="Write PREFIX.key and PREFIX.pub")] = "cosign",
        force: Annotated[bool, typer.Option(help="Overwrite existing files")] = False) -> None:
    """Make a signing key pair like `cosign generate-key-pair`: PREFIX.key (ECDSA P-256,
    encrypted in cosign's format, mode 0600) and PREFIX.pub. The password comes from
    COSIGN_PASSWORD, else it is asked twice (or read from stdin when piped)."""
    from admission.signing.keypair import generate_key_pair
    password = _new_password()
    try:
        files = generate_key_pair(output_key_prefix, password, force=force)
    except FileNotFoundError as exc:
        raise FileUnusable(f"--output-key-prefix {output_key_prefix}: {exc.strerror}",
                           hint="create the directory first") from None
    typer.echo(f"Private key written to {files.private}", err=True)
    typer.echo(f"Public key written to {files.public}", err=True)


# --- attest / verify-attestation ---------------------------------------------------------

def _signing_key(source: str) -> PrivateKey:
    from admission.core.errors import AdmissionError
    from admission.signing.sign import load_signing_key_from
    from keys import KeysError
    try:
        return load_signing_key_from(source)
    except (AdmissionError, KeysError) as exc:
        raise KeyInvalid(exc.detail, hint=exc.hint) from None


def _predicate_uri(type_name: str) -> str:
    from admission.core.attestations import PredicateTypeInvalid, predicate_type_uri
    try:
        return predicate_type_uri(type_name)
    except PredicateTypeInvalid as exc:
        raise UsageError(f"--type {exc.detail}", hint=exc.hint) from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileUnusable(f"{what} {path}: {exc.strerror or exc}") from None


def _reference(image: str) -> Any:
    from admission.core.errors import AdmissionError
    from admission.core.reference import parse_reference
    try:
        return parse_reference(image)
    except AdmissionError as exc:
        raise UsageError(exc.detail, hint=exc.hint, check=exc.check) from None


def attest(image: Annotated[str, typer.Argument(help="IMAGE[:TAG|@DIGEST]")],
           key: Annotated[str, typer.Option(help="PEM or cosign key file, or env://VAR")],
           predicate: Annotated[Path, typer.Option(help="The predicate file (JSON, or text "
                                                   "for custom/spdx)")],
           predicate_type: Annotated[str, typer.Option(
               "--type", help="slsaprovenance1|slsaprovenance|spdxjson|cyclonedx|link|vuln|"
                              "openvex|custom, or a predicate type URI")] = "custom",
           replace: Annotated[bool, typer.Option(help="Replace attestations of the same "
                                                 "predicate type")] = False,
           no_upload: Annotated[bool, typer.Option(help="Print the envelope instead of "
                                                   "attaching it")] = False) -> None:
    """Attach a signed in-toto attestation to an image, as `cosign attest --key` does (a DSSE
    envelope under the sha256-<hex>.att tag; COSIGN_PASSWORD for encrypted keys)."""
    from admission.service.build import registry_client
    from admission.signing.attest import attest_image
    from umec.configs import registry_config
    uri = _predicate_uri(predicate_type)
    body = _read(predicate, "--predicate")
    _check_predicate(predicate, predicate_type, body)
    private_key = _signing_key(key)
    ref = _reference(image)
    settings = load_settings()

    async def run() -> tuple[str, bytes, bool]:
        async with registry_client(registry_config(settings)) as client:
            if no_upload:
                pinned = ref if ref.digest else ref.with_digest((await client.resolve(ref)).digest)
                return await _envelope_only(pinned, private_key, predicate_type, body)
            return await attest_image(client, ref, private_key, type_name=predicate_type,
                                      predicate=body, replace=replace)
    digest, envelope, appended = asyncio.run(run())
    if no_upload:
        sys.stdout.write(envelope.decode() + "\n")
        return
    state = "attested" if appended else "already attested (same statement, same key)"
    console.print(f"{state} {digest} ({uri})", markup=False, soft_wrap=True)


def _check_predicate(path: Path, type_name: str, body: bytes) -> None:
    """The predicate file fits --type (JSON, cosign's required fields) before any request."""
    from admission.core.attestations import AttestationMalformed, build_statement
    try:
        build_statement(type_name, body, repository="check", digest="sha256:" + "0" * 64,
                        timestamp="")
    except AttestationMalformed as exc:
        raise UsageError(f"--predicate {path}: {exc.detail}", hint=exc.hint,
                         check=exc.check) from None


async def _envelope_only(ref: Any, key: PrivateKey, type_name: str, body: bytes
                         ) -> tuple[str, bytes, bool]:
    from admission.core.attestations import build_statement, sign_envelope
    from admission.core.cosign import docker_reference
    from admission.signing.attest import rfc3339
    from admission.signing.sign import sign_bytes
    statement = build_statement(type_name, body,
                                repository=docker_reference(ref.registry, ref.repository),
                                digest=ref.digest, timestamp=rfc3339(datetime.now(UTC)))
    return ref.digest, sign_envelope(statement, lambda m: sign_bytes(key, m)), False


def _public_keys(paths: list[Path]) -> dict[str, PublicKey]:
    from admission.core.keys_cosign import SigningKeyInvalid, load_verification_key
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            keys[str(path)] = load_verification_key(_read(path, "--key"), where=str(path))
        except SigningKeyInvalid as exc:
            raise KeyInvalid(exc.detail, hint=exc.hint) from None
    return keys


def _row(verdict: EnvelopeVerdict) -> dict[str, Any]:
    from admission.core.attestations import statement_facts
    assert verdict.statement is not None
    facts = statement_facts(verdict.statement)
    return {"layer": verdict.layer, "keys": list(verdict.signers),
            "predicateType": verdict.statement.predicate_type,
            "subject": [{"name": n, "digest": dict(d)} for n, d in verdict.statement.subjects],
            "facts": {k: v for k, v in facts.items() if v not in (None, [])},
            "predicate": verdict.statement.predicate}


def _not_verified(pinned: str, uri: str, verdicts: list[EnvelopeVerdict]) -> CliError:
    """Why no attestation of the wanted type verified: the most telling check."""
    other = sorted({v.statement.predicate_type for v in verdicts if v.statement is not None})
    errors = [v.error for v in verdicts if v.error is not None]
    reasons = [f"{e.check}: {e.detail}" for e in errors][:3]
    if other:
        reasons.insert(0, f"verified attestations are of type {', '.join(other)}")
        check = "attestation.predicate"
    else:
        check = errors[0].check if errors else "attestation.missing"
    detail = "; ".join(reasons) if reasons else "none attached"
    return CliError(f"{pinned}: no {uri} attestation verified: {detail}", check=check,
                    hint="attest the image in CI (`umec attest --key KEY --type TYPE "
                         "--predicate FILE IMAGE`), or check --key and --type")


def _summary(facts: dict[str, Any]) -> str:
    """One line a person reads: the builder and sources, or the SBOM's size."""
    parts = []
    if facts.get("builder_id"):
        parts.append(f"builder {facts['builder_id']}")
    if facts.get("source_repositories"):
        parts.append(f"source {', '.join(facts['source_repositories'])}")
    sbom = facts.get("sbom")
    if sbom:
        parts.append(f"{sbom['format']} {sbom.get('version') or ''} with {sbom['packages']} "
                     f"packages".replace("  ", " "))
    return "; ".join(parts) or "-"


def print_document(doc: dict[str, Any], output: Output) -> None:
    """``--output json`` or ``yaml``: the document on stdout."""
    if output is Output.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    import yaml
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))


def _print_verified(pinned: str, rows: list[dict[str, Any]], output: Output) -> None:
    if output is not Output.table:
        print_document({"image": pinned, "attestations": rows}, output)
        return
    from umec.cli_output import print_rows  # it imports this module
    console.print(f"image {pinned}", markup=False, soft_wrap=True)
    print_rows([{"predicate type": row["predicateType"], "key": ", ".join(row["keys"]),
                 "facts": _summary(row["facts"])} for row in rows],
               ("predicate type", "key", "facts"), console=console)


def verify_attestation(
        image: Annotated[str, typer.Argument(help="IMAGE[:TAG|@DIGEST]")],
        key: Annotated[list[Path] | None, typer.Option(
            help="Public key (PEM); repeatable")] = None,
        predicate_type: Annotated[str, typer.Option(
            "--type", help="The predicate type to look for (cosign's names or a URI)")
        ] = "custom",
        output: Annotated[Output, typer.Option(help="table, json or yaml")] = Output.table,
        certificate_identity: CertificateIdentity = None,
        certificate_identity_regexp: CertificateIdentityRegexp = None,
        certificate_oidc_issuer: CertificateOidcIssuer = None,
        certificate_oidc_issuer_regexp: CertificateOidcIssuerRegexp = None,
        trusted_root: TrustedRoot = None,
        certificate_chain: CertificateChain = None,
) -> None:
    """Verify the image's attestations of --type, as `cosign verify-attestation --key` does:
    DSSE signature by one of the keys, statement subject = the image digest. Exit 1 when
    none verifies. cosign's keyless flags are recognised and checked, but keyless attestations
    are not verified yet (exit 2): `umec verify` verifies keyless signatures."""
    from admission.service.build import registry_client
    from admission.signing.attest import verify_image_attestations
    from umec.configs import registry_config
    flags = KeylessFlags(certificate_identity, certificate_identity_regexp,
                         certificate_oidc_issuer, certificate_oidc_issuer_regexp, trusted_root,
                         certificate_chain)
    if is_keyless(key or [], flags):
        raise UsageError("keyless attestations are not verified yet: the webhook has no "
                         "verifier for cosign's keyless .att layers (an intoto Rekor entry)",
                         check="attestation.keyless_unsupported",
                         hint="attest with a key (`umec attest --key`) and verify with --key; "
                              "`umec verify` takes the keyless flags for image signatures")
    uri = _predicate_uri(predicate_type)
    keys = _public_keys(key or [])
    ref = _reference(image)
    settings = load_settings()

    async def run() -> tuple[str, list[EnvelopeVerdict]]:
        async with registry_client(registry_config(settings)) as client:
            pinned = ref if ref.digest else ref.with_digest((await client.resolve(ref)).digest)
            return str(pinned), await verify_image_attestations(client, pinned, keys)
    pinned, verdicts = asyncio.run(run())
    good = [v for v in verdicts if v.statement is not None]
    typed = [v for v in good if v.statement is not None and v.statement.predicate_type == uri]
    if not typed:
        raise _not_verified(pinned, uri, verdicts)
    _print_verified(pinned, [_row(v) for v in typed], output)


# --- sbom / provenance --------------------------------------------------------------------

def _created(created: str | None) -> str:
    """--created, else SOURCE_DATE_EPOCH (reproducible builds), else now; RFC 3339 UTC."""
    from admission.signing.attest import rfc3339
    if created:
        return created
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return rfc3339(datetime.fromtimestamp(int(epoch), UTC))
        except (ValueError, OverflowError, OSError):
            raise UsageError(f"SOURCE_DATE_EPOCH {epoch!r} is not a Unix time",
                             hint="set it to whole seconds since 1970, or unset it") from None
    return rfc3339(datetime.now(UTC))


def _write_out(data: bytes, output_file: Path | None) -> None:
    if output_file is None:
        sys.stdout.write(data.decode())
        return
    try:
        output_file.write_bytes(data)
    except OSError as exc:
        raise FileUnusable(f"--output-file {output_file}: {exc.strerror or exc}") from None


def sbom(source: Annotated[Path, typer.Argument(help="A root filesystem directory or an OCI "
                                                "image layout directory")],
         sbom_format: Annotated[SbomFormat, typer.Option(
             "--format", help="spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.5 JSON)")
         ] = SbomFormat.spdx,
         name: Annotated[str | None, typer.Option(help="The image's name in the SBOM "
                                                  "(default: the directory name)")] = None,
         platform: Annotated[str | None, typer.Option(help="os/arch (or os/arch/variant) to "
                                                      "pick in a multi-platform layout")] = None,
         created: Annotated[str | None, typer.Option(help="Creation time, RFC 3339 (default: "
                                                     "SOURCE_DATE_EPOCH, else now)")] = None,
         output_file: Annotated[Path | None, typer.Option(help="Write here instead of "
                                                          "stdout")] = None) -> None:
    """Write an SBOM of what is installed (dpkg status, Python *.dist-info) in a root
    filesystem or an OCI image layout, for `umec attest --type spdxjson|cyclonedx`."""
    from admission.signing.sbom import FORMATS, SbomSourceInvalid, read_inventory, sbom_json
    try:
        inv = read_inventory(source, platform)
    except SbomSourceInvalid as exc:
        raise UsageError(exc.detail, hint=exc.hint, check=exc.check) from None
    document = FORMATS[sbom_format.value](name or source.resolve().name, inv, _created(created))
    _write_out(sbom_json(document), output_file)
    debs = sum(1 for p in inv.packages if p.ecosystem == "deb")
    typer.echo(f"{len(inv.packages)} packages ({debs} deb, {len(inv.packages) - debs} pypi"
               f"{', ' + inv.distro if inv.distro else ''})", err=True)


def provenance(
        from_env: Annotated[CiKind, typer.Option(help="Read the values from this CI's "
                                                 "environment")] = CiKind.none,
        builder_id: Annotated[str | None, typer.Option(help="runDetails.builder.id")] = None,
        source_repo: Annotated[str | None, typer.Option(help="The source repository URL")
                               ] = None,
        commit: Annotated[str | None, typer.Option(help="The git commit built")] = None,
        ref: Annotated[str | None, typer.Option(help="The git ref built (refs/heads/main)")
                       ] = None,
        build_type: Annotated[str | None, typer.Option(help="buildDefinition.buildType URI")
                              ] = None,
        invocation_id: Annotated[str | None, typer.Option(help="This run's URL or id")] = None,
        output_file: Annotated[Path | None, typer.Option(help="Write here instead of "
                                                         "stdout")] = None) -> None:
    """Write a SLSA v1 provenance predicate for `umec attest --type slsaprovenance1`; flags
    override what --from-env reads."""
    from admission.signing.provenance import (
        DEFAULT_BUILD_TYPE,
        ProvenanceIncomplete,
        ci_values,
        merged,
        slsa_v1_predicate,
    )
    values = merged(ci_values(from_env.value, os.environ), builder_id=builder_id,
                    source_repository=source_repo, commit=commit, ref=ref,
                    invocation_id=invocation_id)
    try:
        predicate = slsa_v1_predicate(values, build_type=build_type or DEFAULT_BUILD_TYPE,
                                      finished=_created(None))
    except ProvenanceIncomplete as exc:
        raise UsageError(exc.detail, hint=exc.hint, check=exc.check) from None
    _write_out(json.dumps(predicate, indent=2).encode() + b"\n", output_file)
