"""The ``umec`` command line (typer): every verb has ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from umec import cli_admission, cli_attest, cli_deploy, cli_policy
from umec.cli_backend import backend
from umec.cli_config import config_app
from umec.cli_errors import (
    CliError,
    FileUnusable,
    SettingsInvalid,
    UmecGroup,
    UsageError,
    checked_log_level,
    load_settings,
    require_readable,
)
from umec.cli_output import Output, emit, node_text, package_version, print_document
from umec.logs import configure_logging
from umec.settings import Settings

# UmecGroup maps every command's failure to one stderr line and an exit code (umec.cli_errors).
app = typer.Typer(help="µMEC Trust: TPM attestation, signed images, scoped tokens.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=UmecGroup)
MODES = ("With UMEC_SERVER_URL (and UMEC_OPERATOR_TOKEN, UMEC_SERVER_CA) or a context file "
         "(~/.config/umec/config.yaml, `umec config`), it calls the server's API; with "
         "neither, it opens the local database (UMEC_DATABASE_URL): bootstrap mode only.")
policy_app = typer.Typer(help="Appraisal policies per node class. " + MODES,
                         no_args_is_help=True)
nodes_app = typer.Typer(help="The attested fleet. " + MODES, invoke_without_command=True)
app.add_typer(policy_app, name="policy")
app.add_typer(nodes_app, name="nodes")
app.command()(cli_admission.sign)
app.command()(cli_admission.verify)
app.add_typer(cli_admission.webhook_app, name="webhook")
app.add_typer(cli_attest.keys_app, name="keys")
app.add_typer(cli_deploy.deploy_app, name="deploy")
app.add_typer(config_app, name="config")
app.command()(cli_attest.attest)
app.command("verify-attestation")(cli_attest.verify_attestation)
app.command()(cli_attest.sbom)
app.command()(cli_attest.provenance)
console = Console()
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table, json or yaml")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"umec {package_version()}")
        raise typer.Exit(0)


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print `umec <version>` and exit")] = False) -> None:
    """µMEC Trust: TPM attestation, signed images, scoped tokens."""


def _settings() -> Settings:
    """The validated settings; a bad UMEC_* value is a usage error (exit 2)."""
    return load_settings()


def _server_files(settings: Settings) -> None:
    """The files a server reads at start exist and are readable (else one line, exit 2)."""
    require_readable([settings.tls_cert, settings.tls_key], "TLS file")
    require_readable([settings.ek_ca_bundle], "UMEC_EK_CA_BUNDLE")
    if settings.policy_dir is not None and not settings.policy_dir.is_dir():
        raise FileUnusable(f"UMEC_POLICY_DIR {settings.policy_dir}: not a directory")


@app.command()
def server(host: Annotated[str | None, typer.Option(help="Listen address")] = None,
           port: Annotated[int | None, typer.Option(help="Listen port")] = None,
           workers: Annotated[int, typer.Option(help="Worker processes (one per core); they "
                                                "share the database")] = 1) -> None:
    """Run the control plane: attestation, token service, MEC 011 and the resource APIs."""
    import uvicorn

    from umec.app import build_server
    from umec.http_limits import uvicorn_options
    from umec.workers import probe_listen
    settings = _settings()
    _server_files(settings)
    configure_logging(checked_log_level(settings))
    ssl: dict[str, Any] = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    listen_host, listen_port = host or settings.listen_host, port or settings.listen_port
    listen: dict[str, Any] = {"host": listen_host, "port": listen_port}
    probe_listen(listen_host, listen_port)  # a taken port: one line
    if workers > 1:
        # Each worker builds the app from the same settings (environment / UMEC_CONFIG); the
        # lease keeps one deadline checker, revocations reach every worker through the feed.
        # Each worker binds its own SO_REUSEPORT socket (umec.workers says why).
        from umec.app import prepare_server
        from umec.workers import run_workers
        prepare_server(settings)
        run_workers(uvicorn.Config("umec.app:create_app", factory=True, workers=workers,
                                   log_config=None, **listen, **ssl, **uvicorn_options()))
        return
    srv = build_server(settings)
    uvicorn.run(srv.app, log_config=None, **listen, **ssl, **uvicorn_options())


@app.command()
def agent(once: Annotated[bool, typer.Option(help="Attest once; exit 0 only if trusted")] = False,
          join: Annotated[Path | None, typer.Option(
              "--join", metavar="PATH", help="After a trusted verdict, fetch this node's k3s "
              "join token (sealed to its TPM) and write it to PATH: a systemd drop-in (*.conf, "
              "K3S_TOKEN) or k3s's config.yaml (token:); default UMEC_AGENT_JOIN_TOKEN_PATH")
          ] = None) -> None:
    """Run the node agent: enrol, activate, then attest every interval."""
    from umec.agent_process import handover
    settings = _settings()
    if not settings.node_name:
        raise SettingsInvalid("UMEC_NODE_NAME is required",
                              hint="set UMEC_NODE_NAME to this node's Kubernetes node name")
    require_readable([settings.server_ca], "UMEC_SERVER_CA")
    require_readable(settings.measure_files, "UMEC_MEASURE_FILES entry")
    # Settings are validated here; the agent itself runs in a lean process (see agent_process).
    handover({"node_name": settings.node_name, "tcti": settings.tcti,
              "state_dir": str(settings.agent_state_dir), "ak_kind": settings.ak_kind,
              "ek_kind": settings.ek_kind, "node_class": settings.node_class or None,
              "interval_seconds": settings.attestation_interval_seconds,
              "event_log_path": str(settings.event_log_path) if settings.event_log_path else None,
              "measure_files": [str(p) for p in settings.measure_files],
              "application_pcr": settings.application_pcr, "server_url": settings.server_url,
              "server_ca": str(settings.server_ca) if settings.server_ca else None,
              "agent_role": settings.agent_role,
              "host_agent_marker": str(settings.host_agent_marker),
              "join_token_path": str(join or settings.agent_join_token_path or "") or None,
              "log_level": checked_log_level(settings)}, once=once)


def _why(row: dict[str, Any]) -> str:
    verdict = row["last_verdict"] or {}
    why = "; ".join(f"{f['check']}: {f['detail']}" for f in verdict.get("failed_checks", []))
    return why or ("-" if verdict.get("trusted", True) else "failed")


NODE_CELLS = {"node": lambda r: str(r["name"]), "class": lambda r: str(r["node_class"]),
              "since": lambda r: str(r["state_changed_at"])[:19],
              "last pass": lambda r: str(r["last_pass_at"] or "-")[:19], "why": _why}


@nodes_app.callback()
def nodes(ctx: typer.Context, output: OutputOption = Output.table,
          as_json: Annotated[bool, typer.Option("--json", hidden=True,
                                                help="Same as --output json")] = False,
          ) -> None:
    """List the fleet: state, last verdict and why."""
    if ctx.invoked_subcommand is not None:
        return
    emit(backend().nodes(), Output.json if as_json else output,
         ("node", "class", "state", "since", "last pass", "why"), NODE_CELLS)


@nodes_app.command("show")
def nodes_show(name: str, output: OutputOption = Output.table) -> None:
    """One node: state, class, since, last pass, its last verdict (failed checks with what to
    do) and its recent state changes."""
    detail = backend().node(name)
    if output is not Output.table:
        print_document(detail, output)
        return
    sys.stdout.write(node_text(detail))


@nodes_app.command("remove")
def nodes_remove(name: str) -> None:
    """Forget a node (e.g. after a TPM replacement); it must enrol again. Its tokens are
    revoked with the removal."""
    backend().remove(name)
    typer.echo(f"removed {name}")


@nodes_app.command("rename")
def nodes_rename(old: str, new: str) -> None:
    """Give a node's TPM a new name; it is trusted again after its first passing quote under
    the new name (its agent must be configured with the new name)."""
    backend().rename(old, new)
    typer.echo(f"renamed {old} to {new}; it is trusted again after its next passing quote")


@nodes_app.command("ack")
def nodes_ack(name: str) -> None:
    """Acknowledge an untrusted/stale node whose class policy has require_ack: its next
    passing quote makes it trusted again. When none is needed (the node is trusted, or its
    policy has no require_ack) it says so (node.ack_not_needed, exit 1) and records nothing."""
    state = backend().ack(name)["state"]
    typer.echo(f"acknowledged {name} ({state}); it becomes trusted with its next passing "
               f"quote")


policy_app.command("set")(cli_policy.policy_set)
policy_app.command("sign")(cli_policy.sign)
policy_app.command("verify")(cli_policy.verify)
policy_app.command("history")(cli_policy.history)
policy_app.command("rollback")(cli_policy.rollback)
policy_app.command("create")(cli_policy.create)


policy_app.command("diff")(cli_policy.diff)


@policy_app.command("list")
def policy_list(output: OutputOption = Output.table) -> None:
    """List the policies: the stored ones, and the built-in default while none of its class
    is stored."""
    emit(backend().policies(), output, ("class", "generation", "version", "updated", "source"),
         {"updated": lambda r: str(r["updated"] or "-")[:19]})


@policy_app.command("show")
def policy_show(name: str, output: OutputOption = Output.table) -> None:
    """Print a class's policy document (the built-in default's too); table: the YAML."""
    shown = backend().policy(name)
    if output is not Output.table:
        print_document(shown, output)
        return
    sys.stdout.write(shown["document"])


@policy_app.command("remove")
def policy_remove(name: str) -> None:
    """Remove a policy no node uses."""
    backend().remove_policy(name)
    typer.echo(f"removed {name}")


tokens_app = typer.Typer(help="The token service's signing keys.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("rotate-key")
def tokens_rotate_key(overlap_seconds: Annotated[float, typer.Option(
        help="How long the old key stays in the JWKS (at least the token lifetime)")] = 600.0
                      ) -> None:
    """Make a fresh ES256 key active; running servers pick it up within seconds. Remote mode
    asks the server (operator token); local mode writes the server's data directory."""
    kid = backend().rotate_token_key(overlap_seconds)
    console.print(f"active key {kid}; the previous key stays published for "
                  f"{overlap_seconds:g} s")


@app.command()
def api(names: Annotated[list[str], typer.Argument(help="sensor, mec011, camera, inference")],
        host: Annotated[str | None, typer.Option(help="Listen address")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port")] = None) -> None:
    """Run resource APIs as their own process (tokens checked against UMEC_TOKEN_SERVICE_URL)."""
    import uvicorn

    from mec_api.service.apis import API_NAMES
    from umec.api_process import MissingTokenService, build_api_process
    from umec.http_limits import uvicorn_options
    unknown = sorted(set(names) - set(API_NAMES))
    if unknown:
        raise UsageError(f"unknown API {', '.join(unknown)}",
                         hint=f"name APIs among: {', '.join(API_NAMES)}")
    settings = _settings()
    require_readable([settings.tls_cert, settings.tls_key], "TLS file")
    configure_logging(checked_log_level(settings))
    try:
        application = build_api_process(settings, names)
    except MissingTokenService:
        raise SettingsInvalid("UMEC_TOKEN_SERVICE_URL is not set", hint="set it to the umec "
                              "server's base URL (its JWKS and revocation feed protect this "
                              "API)") from None
    ssl: dict[str, Any] = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    uvicorn.run(application, host=host or settings.listen_host, port=port or settings.api_port,
                log_config=None, **ssl, **uvicorn_options())


@app.command()
def demo(workdir: Annotated[Path | None, typer.Option(help="Keep state here")] = None,
         stay: Annotated[float, typer.Option(
             help="After a passing story, keep the dashboard and the sample app up this many "
                  "seconds (Ctrl-C ends it; 'inf' until then)", min=0)] = 0.0) -> None:
    """Everything on one machine: swtpm nodes, server, agents; a node is tampered with.
    The log (UMEC_LOG_LEVEL) is kept, and its path printed on stderr, when a step fails."""
    from attest.tpm.swtpm import swtpm_available
    from umec.demo import run_demo
    from umec.localregistry import registry_available
    log_level = checked_log_level(_settings())
    if not (swtpm_available() and registry_available()):
        raise CliError("the demo needs swtpm, swtpm_setup, swtpm_localca and docker-registry",
                       check="demo.requirements",
                       hint="run scripts/setup.sh (it installs the Debian packages)")
    raise typer.Exit(run_demo(console, workdir, log_level, stay_seconds=stay))
