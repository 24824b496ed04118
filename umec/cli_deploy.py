"""``umec deploy render``: the Secrets, ConfigMaps, certificates and keys deploy/ needs
(:mod:`umec.deploy_render`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from umec.cli_errors import FileUnusable, UsageError

deploy_app = typer.Typer(help="What a k3s cluster needs besides deploy/'s manifests.",
                         no_args_is_help=True)


def _check_k3s_ca(path: Path) -> None:
    """``--k3s-server-ca`` must be PEM certificates: its sha256 goes into every join token, and
    k3s-agent refuses a token whose hash is not its server's CA."""
    from cryptography import x509
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise FileUnusable(f"--k3s-server-ca {path}: {exc.strerror}") from None
    except ValueError:
        raise FileUnusable(f"--k3s-server-ca {path}: not a PEM certificate",
                           hint="copy /var/lib/rancher/k3s/server/tls/server-ca.crt from a k3s "
                                "server as it is") from None


@deploy_app.command("render")
def render(directory: Annotated[Path, typer.Option("--dir", help="Output directory (kept: "
                                                   "re-running reuses its CAs and keys)")],
           database_url: Annotated[str, typer.Option(
               help="postgresql://… the server replicas and the webhook share",
               envvar="UMEC_DATABASE_URL")],
           ek_ca: Annotated[Path | None, typer.Option(
               help="PEM bundle of the TPM manufacturers' EK CAs you trust")] = None,
           server_name: Annotated[list[str] | None, typer.Option(
               help="More names or addresses for the server's certificate (agents outside "
                    "the cluster); repeatable")] = None,
           k3s_server_ca: Annotated[Path | None, typer.Option(
               help="The k3s server's CA certificate (its "
                    "/var/lib/rancher/k3s/server/tls/server-ca.crt): ConfigMap "
                    "umec-k3s-server-ca, which deploy/host-join/ gives the server so it hands "
                    "host agents their k3s join token")] = None,
           apiserver_dir: Annotated[str, typer.Option(
               help="Where the API server's webhook files will lie on each k3s server"
           )] = "/var/lib/rancher/k3s/server/umec-webhook",
           output: Annotated[str, typer.Option(help="table or json")] = "table") -> None:
    """Write certificates, key rings, the operator and metrics tokens and secrets.yaml (every
    Secret and ConfigMap of deploy/README.md, for `kubectl apply -f`)."""
    from umec.deploy_render import RenderConfig, render
    if output not in ("table", "json"):
        raise UsageError(f"--output {output}: not one of table, json")
    if not database_url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise UsageError(f"--database-url {database_url[:40]!r}: not a postgresql:// URL",
                         hint="two server replicas and the webhook share one PostgreSQL")
    if ek_ca is not None and not ek_ca.is_file():
        raise FileUnusable(f"--ek-ca {ek_ca}: not a file")
    if k3s_server_ca is not None:
        _check_k3s_ca(k3s_server_ca)
    try:
        done = render(RenderConfig(directory, database_url, ek_ca,
                                   server_names=tuple(server_name or ()),
                                   k3s_server_ca=k3s_server_ca,
                                   apiserver_dir=apiserver_dir))
    except ValueError as exc:   # an apiserver dir that is not absolute
        raise UsageError(f"--apiserver-dir {exc}") from None
    if output == "json":
        print(json.dumps({"secrets": str(done.secrets_file), "objects": list(done.objects),
                          "apiserver_files": [str(p) for p in done.apiserver_files],
                          "ca_bundle": done.ca_bundle}))
        return
    print(f"wrote {done.secrets_file} (0600, private keys inside): kubectl apply -f it")
    for obj in done.objects:
        print(f"  {obj}")
    print(f"copy to {apiserver_dir} on every k3s server: "
          + " ".join(str(p) for p in done.apiserver_files))


@deploy_app.command("image-policy")
def image_policy(namespace: Annotated[str, typer.Option(help="The tenant's namespace")],
                 name: Annotated[str, typer.Option(help="The policy's name")],
                 image: Annotated[list[str], typer.Option(
                     help="Image glob (* within a path part, ** across); repeatable")],
                 key: Annotated[list[Path], typer.Option(
                     help="Public key file (PEM, e.g. from `umec keys generate`); repeatable")],
                 threshold: Annotated[int, typer.Option(
                     help="How many of the keys must have signed")] = 1) -> None:
    """Print an ImagePolicy (YAML) admitting IMAGE into NAMESPACE when THRESHOLD of the keys
    signed it, checked by the webhook's own parser first."""
    import yaml

    from admission.core.errors import AdmissionError
    from admission.core.policy import parse_policy
    keys = []
    for path in key:
        try:
            keys.append({"name": path.stem, "pem": path.read_text()})
        except OSError as exc:
            raise FileUnusable(f"--key {path}: {exc.strerror or exc}") from None
    doc = {"apiVersion": "umec.io/v1alpha1", "kind": "ImagePolicy",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"images": list(image), "authorities": [
               {"name": name, "threshold": threshold, "keys": keys}]}}
    try:
        parse_policy(doc)
    except AdmissionError as exc:
        raise UsageError(exc.detail, hint=exc.hint) from None
    class Dumper(yaml.SafeDumper):
        pass

    def block(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", text,
                                       style="|" if "\n" in text else None)
    Dumper.add_representer(str, block)
    print(yaml.dump(doc, Dumper=Dumper, sort_keys=False), end="")
