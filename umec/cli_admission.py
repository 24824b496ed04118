"""``umec sign``, ``umec verify`` and ``umec webhook``: image signing in CI, checks, the webhook."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from umec.settings import Settings

console = Console()
webhook_app = typer.Typer(help="The admission webhook (HTTPS) and its certificates.",
                          invoke_without_command=True)


def _fail(exc: Exception) -> typer.Exit:
    detail = getattr(exc, "detail", str(exc))
    check = getattr(exc, "check", type(exc).__name__)
    console.print(f"[red]{check}[/red]: {detail}")
    hint = getattr(exc, "hint", "")
    if hint:
        console.print(f"  what to do: {hint}")
    return typer.Exit(1)


def sign(image: Annotated[str, typer.Argument(help="IMAGE[:TAG|@DIGEST]")],
         key: Annotated[str, typer.Option(help="PEM or cosign key file, or env://VAR")],
         recursive: Annotated[bool, typer.Option(help="Sign every manifest of an index")] = False,
         bundle: Annotated[bool, typer.Option(help="Also attach a Sigstore bundle")] = False,
         ) -> None:
    """Sign an image in cosign's format (COSIGN_PASSWORD for encrypted keys)."""
    from admission.core.errors import AdmissionError
    from admission.core.reference import parse_reference
    from admission.signing import load_signing_key_from, sign_image
    from keys import KeysError
    from umec.admission_wiring import registry_client

    async def run() -> list[str]:
        async with registry_client(Settings()) as client:
            return await sign_image(client, parse_reference(image),
                                    load_signing_key_from(key), recursive=recursive,
                                    bundle=bundle)
    try:
        digests = asyncio.run(run())
    except (AdmissionError, KeysError, OSError) as exc:
        raise _fail(exc) from None
    for digest in digests:
        console.print(f"signed {digest}")


def verify(image: Annotated[str, typer.Argument(help="IMAGE[:TAG|@DIGEST]")],
           key: Annotated[list[Path], typer.Option(help="Public key (PEM); repeatable")],
           threshold: Annotated[int, typer.Option(help="Distinct keys required")] = 1) -> None:
    """Print which keys signed which digest; exit 1 unless THRESHOLD keys signed it."""
    from admission.core.errors import AdmissionError
    from admission.core.reference import parse_reference
    from umec.admission_wiring import load_public_keys, registry_client

    async def run() -> tuple[str, list, list]:  # type: ignore[type-arg]
        from admission.verification import verify_image_signatures
        ref = parse_reference(image)
        async with registry_client(Settings()) as client:
            if ref.digest is None:
                ref = ref.with_digest((await client.resolve(ref)).digest)
            signers, failures = await verify_image_signatures(client, ref,
                                                              load_public_keys(key))
        return str(ref), signers, failures
    try:
        pinned, signers, failures = asyncio.run(run())
    except (AdmissionError, OSError) as exc:
        raise _fail(exc) from None
    table = Table("digest", "key", "format")
    for s in signers:
        table.add_row(s.digest, s.key_id, s.kind)
    console.print(f"image {pinned}")
    console.print(table)
    distinct = {s.key_id for s in signers}
    if len(distinct) < threshold:
        console.print(f"[red]policy not met[/red]: {len(distinct)} of {threshold} keys signed")
        for f in failures:
            console.print(f"  ✗ {f.check}: {f.detail}")
        raise typer.Exit(1)
    console.print(f"[green]verified[/green]: {len(distinct)} key(s) signed this digest")


@webhook_app.callback()
def webhook(ctx: typer.Context,
            host: Annotated[str, typer.Option(help="Listen address")] = "0.0.0.0",
            port: Annotated[int | None, typer.Option(help="Listen port")] = None) -> None:
    """Run the admission webhook over HTTPS (UMEC_WEBHOOK_TLS_CERT / _KEY)."""
    if ctx.invoked_subcommand is not None:
        return
    from umec.webhook_process import handover
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's message already names the bad variable
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None
    if settings.webhook_tls_cert is None or settings.webhook_tls_key is None:
        console.print("[red]UMEC_WEBHOOK_TLS_CERT and UMEC_WEBHOOK_TLS_KEY are required[/red] "
                      "(create them with `umec webhook certs`)")
        raise typer.Exit(2)
    # Settings are valid; the webhook itself runs in a lean process (see webhook_process).
    handover(host, port or settings.webhook_port)


@webhook_app.command("certs")
def webhook_certs(directory: Annotated[Path, typer.Option("--dir", help="Output directory")],
                  service: str = "umec-webhook", namespace: str = "umec-system") -> None:
    """Create a CA and a serving certificate for the Service; print the caBundle."""
    from admission.certs import create_webhook_certs
    certs = create_webhook_certs(directory, service, namespace)
    console.print(f"serving cert {certs.cert}, key {certs.key} (0600)")
    print(certs.ca_bundle)
