"""The ``umec`` command line (typer): every verb has ``--help``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from umec import cli_admission
from umec.logs import configure_logging
from umec.settings import Settings

app = typer.Typer(help="µMEC Trust: TPM attestation, signed images, scoped tokens.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
policy_app = typer.Typer(help="Appraisal policies per node class.", no_args_is_help=True)
nodes_app = typer.Typer(help="The attested fleet.", invoke_without_command=True)
app.add_typer(policy_app, name="policy")
app.add_typer(nodes_app, name="nodes")
app.command()(cli_admission.sign)
app.command()(cli_admission.verify)
app.add_typer(cli_admission.webhook_app, name="webhook")
console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message already names the bad variable
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


def _sessions(settings: Settings):  # type: ignore[no-untyped-def]
    from umec.db import open_database
    return open_database(settings.resolved_database_url())[1]


@app.command()
def server(host: Annotated[str | None, typer.Option(help="Listen address")] = None,
           port: Annotated[int | None, typer.Option(help="Listen port")] = None,
           workers: Annotated[int, typer.Option(help="Worker processes (one per core); they "
                                                "share the database")] = 1) -> None:
    """Run the control plane: attestation, token service, MEC 011 and the resource APIs."""
    import uvicorn

    from umec.app import build_server
    from umec.http_limits import uvicorn_options
    settings = _settings()
    configure_logging(settings.log_level)
    ssl = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    listen = {"host": host or settings.listen_host, "port": port or settings.listen_port}
    if workers > 1:
        # Each worker builds the app from the same settings (environment / UMEC_CONFIG); the
        # lease keeps one deadline checker, revocations reach every worker through the feed.
        from umec.app import prepare_server
        prepare_server(settings)
        uvicorn.run("umec.app:create_app", factory=True, workers=workers, log_config=None,
                    **listen, **ssl, **uvicorn_options())  # type: ignore[arg-type]
        return
    srv = build_server(settings)
    uvicorn.run(srv.app, log_config=None, **listen, **ssl,  # type: ignore[arg-type]
                **uvicorn_options())


@app.command()
def agent(once: Annotated[bool, typer.Option(help="Attest once; exit 0 only if trusted")] = False,
          ) -> None:
    """Run the node agent: enrol, activate, then attest every interval."""
    from umec.agent_process import handover
    settings = _settings()
    if not settings.node_name:
        console.print("[red]UMEC_NODE_NAME is required[/red] (the Kubernetes node name)")
        raise typer.Exit(2)
    # Settings are validated here; the agent itself runs in a lean process (see agent_process).
    handover({"node_name": settings.node_name, "tcti": settings.tcti,
              "state_dir": str(settings.agent_state_dir), "ak_kind": settings.ak_kind,
              "ek_kind": settings.ek_kind, "node_class": settings.node_class or None,
              "interval_seconds": settings.attestation_interval_seconds,
              "event_log_path": str(settings.event_log_path) if settings.event_log_path else None,
              "measure_files": [str(p) for p in settings.measure_files],
              "application_pcr": settings.application_pcr, "server_url": settings.server_url,
              "server_ca": str(settings.server_ca) if settings.server_ca else None,
              "log_level": settings.log_level}, once=once)


@nodes_app.callback()
def nodes(ctx: typer.Context,
          as_json: Annotated[bool, typer.Option("--json", help="Machine-readable")] = False,
          ) -> None:
    """List the fleet: state, last verdict and why."""
    if ctx.invoked_subcommand is not None:
        return
    from sqlalchemy import select

    from attest.service.api import node_summary
    from attest.service.models import NodeRow
    with _sessions(_settings())() as session:
        rows = [node_summary(n) for n in session.scalars(select(NodeRow).order_by(NodeRow.name))]
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        return
    table = Table("node", "class", "state", "since", "last pass", "why")
    for r in rows:
        verdict = r["last_verdict"] or {}
        why = "; ".join(f"{f['check']}: {f['detail']}" for f in verdict.get("failed_checks", []))
        colour = {"trusted": "green", "untrusted": "red", "stale": "yellow"}.get(r["state"], "")
        table.add_row(r["name"], r["node_class"], f"[{colour}]{r['state']}[/]" if colour else
                      r["state"], r["state_changed_at"][:19], (r["last_pass_at"] or "-")[:19],
                      why or ("-" if verdict.get("trusted", True) else "failed"))
    console.print(table)


def _registrar_step(step: Callable[[Any], None]) -> None:
    """Run an operator step of the registrar; a refusal is one line on stderr, exit 1."""
    from attest.core.errors import AttestationError
    from attest.service.context import AttestConfig, AttestContext
    ctx = AttestContext(config=AttestConfig(), sessions=_sessions(_settings()),
                        sign_result=lambda claims: "")
    try:
        step(ctx)
    except AttestationError as exc:
        err_console.print(f"error: {exc.check}: {exc.detail} ({exc.hint})", markup=False)
        raise typer.Exit(1) from None


@nodes_app.command("remove")
def nodes_remove(name: str) -> None:
    """Forget a node (e.g. after a TPM replacement); it must enrol again."""
    from attest.service import registrar
    _registrar_step(lambda ctx: registrar.remove(ctx, name))
    console.print(f"removed {name}")


@nodes_app.command("rename")
def nodes_rename(old: str, new: str) -> None:
    """Give a node's TPM a new name; it is trusted again after its first passing quote under
    the new name (its agent must be configured with the new name)."""
    from attest.service import registrar
    _registrar_step(lambda ctx: registrar.rename(ctx, old, new))
    console.print(f"renamed {old} to {new}; it is trusted again after its next passing quote")


@nodes_app.command("ack")
def nodes_ack(name: str) -> None:
    """Acknowledge an untrusted/stale node (policies with require_ack): its next passing
    quote makes it trusted again."""
    from attest.core.errors import AttestationError
    from attest.service.context import AttestConfig, AttestContext
    from attest.service.verifier import acknowledge
    ctx = AttestContext(config=AttestConfig(), sessions=_sessions(_settings()),
                        sign_result=lambda claims: "")
    try:
        state = acknowledge(ctx, name)
    except AttestationError as exc:
        console.print(f"[red]{exc.check}: {exc.detail}[/red]\n  → {exc.hint}")
        raise typer.Exit(1) from None
    console.print(f"acknowledged {name} ({state}); it becomes trusted with its next passing "
                  f"quote")


@policy_app.command("set")
def policy_set(file: Annotated[Path, typer.Argument(exists=True, readable=True)]) -> None:
    """Create or replace the appraisal policy in FILE (YAML; its `name` is the node class)."""
    from attest.core.policy import PolicyInvalid
    from attest.service.policies import set_policy
    try:
        policy, generation = set_policy(_sessions(_settings()), file.read_text(encoding="utf-8"))
    except PolicyInvalid as exc:
        console.print(f"[red]policy rejected:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"policy {policy.name!r} stored (generation {generation})")


@policy_app.command("list")
def policy_list() -> None:
    """List the stored policies."""
    from attest.service.policies import list_policies
    table = Table("class", "generation", "updated")
    for row in list_policies(_sessions(_settings())):
        table.add_row(row.name, str(row.generation), row.updated_at.isoformat()[:19])
    console.print(table)


@policy_app.command("show")
def policy_show(name: str) -> None:
    """Print a stored policy document."""
    from attest.service.policies import list_policies
    for row in list_policies(_sessions(_settings())):
        if row.name == name:
            sys.stdout.write(row.document)
            return
    console.print(f"[red]no policy {name!r}[/red]")
    raise typer.Exit(1)


@policy_app.command("remove")
def policy_remove(name: str) -> None:
    """Remove a policy no node uses."""
    from attest.service.policies import PolicyInUse, remove_policy
    try:
        removed = remove_policy(_sessions(_settings()), name)
    except PolicyInUse as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if not removed:
        console.print(f"[red]no policy {name!r}[/red]")
        raise typer.Exit(1)
    console.print(f"removed {name}")


tokens_app = typer.Typer(help="The token service's signing keys.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("rotate-key")
def tokens_rotate_key(overlap_seconds: Annotated[float, typer.Option(
        help="How long the old key stays in the JWKS (at least the token lifetime)")] = 600.0
                      ) -> None:
    """Make a fresh ES256 key active; running servers pick it up within seconds."""
    from umec.tokens_wiring import rotate_token_key
    settings = _settings()
    try:
        kid = rotate_token_key(settings.data_dir / "keys" / "access-tokens", overlap_seconds,
                               settings.token_lifetime_seconds)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"active key {kid}; the previous key stays published for "
                  f"{overlap_seconds:g} s")


@app.command()
def api(names: Annotated[list[str], typer.Argument(help="sensor, mec011, camera, inference")],
        host: Annotated[str | None, typer.Option(help="Listen address")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port")] = None) -> None:
    """Run resource APIs as their own process (tokens checked against UMEC_TOKEN_SERVICE_URL)."""
    import uvicorn

    from umec.api_process import MissingTokenService, build_api_process
    from umec.http_limits import uvicorn_options
    settings = _settings()
    configure_logging(settings.log_level)
    try:
        application = build_api_process(settings, names)
    except (MissingTokenService, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ssl = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    uvicorn.run(application, host=host or settings.listen_host, port=port or settings.api_port,
                log_config=None, **ssl, **uvicorn_options())  # type: ignore[arg-type]


@app.command()
def demo(workdir: Annotated[Path | None, typer.Option(help="Keep state here")] = None) -> None:
    """Everything on one machine: swtpm nodes, server, agents; a node is tampered with."""
    from umec.demo import run_demo
    raise typer.Exit(run_demo(console, workdir))
