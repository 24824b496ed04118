"""``umec policy set|sign|verify|history|rollback``: signed, versioned appraisal policies.

Signing keys are read as ``umec sign`` reads them (PEM or cosign's encrypted key files, or
env://VAR; COSIGN_PASSWORD for encrypted ones); verification keys are PEM/DER public keys
(cosign.pub is one). Refusals are :class:`attest.core.policy_envelope.PolicyEnvelopeError`
subclasses, printed as one line naming the check (``policy.rollback``, ``policy.signer``, ...)
with exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from umec.cli_attest import Output
from umec.cli_errors import CliError, FileUnusable, KeyInvalid, UsageError, load_settings
from umec.cli_output import emit

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from attest.service.policies import PolicyTrust
    from keys import PublicKey

console = Console()
err_console = Console(stderr=True)
KeysOption = Annotated[list[str], typer.Option(
    "--key", help="Signing key: PEM or cosign key file, or env://VAR; repeatable")]


def _sessions() -> sessionmaker[Session]:
    from umec.db import open_database
    return open_database(load_settings().resolved_database_url())[1]


def _trust() -> PolicyTrust:
    from attest.service.policies import PolicyTrust
    from umec.configs import policy_signers
    settings = load_settings()
    return PolicyTrust(policy_signers(settings), settings.policy_threshold)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileUnusable(f"{path}: {exc.strerror or exc}") from None


def _write(data: bytes, output_file: Path | None) -> None:
    if output_file is None:
        sys.stdout.write(data.decode())
        return
    try:
        output_file.write_bytes(data)
    except OSError as exc:
        raise FileUnusable(f"-o {output_file}: {exc.strerror or exc}") from None


def _rejected(where: str, exc: Exception) -> CliError:
    return CliError(f"{where}: {exc}", check="policy.rejected",
                    hint="fix the named key of the policy (attest/core/policy.py describes the "
                         "format) and run the command again")


def _apply(raw: bytes, where: str) -> None:
    from attest.core.policy import PolicyInvalid
    from attest.service.policies import apply_policy
    try:
        applied = apply_policy(_sessions(), raw, _trust())
    except PolicyInvalid as exc:
        raise _rejected(where, exc) from None
    version = f", version {applied.version}" if applied.version is not None else ""
    signed = f", signed by {len(applied.signers)}" if applied.signers else ""
    state = "stored" if applied.changed else "unchanged"
    console.print(f"policy {applied.policy.name!r} {state} (generation "
                  f"{applied.generation}{version}{signed})", markup=False)


def policy_set(file: Annotated[Path, typer.Argument(exists=True, readable=True,
                                                    dir_okay=False)]) -> None:
    """Create or replace the appraisal policy in FILE: YAML (its `name` is the node class) or
    the DSSE envelope `umec policy sign` wrote (required when UMEC_POLICY_SIGNERS is set)."""
    raw = _read(file)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileUnusable(f"{file}: not UTF-8 text ({exc.reason})",
                           hint="pass the policy as a YAML text file") from None
    _apply(raw, str(file))


def _private_keys(sources: list[str]) -> list[Any]:
    from umec.cli_admission import _signing_key
    return [_signing_key(s) for s in sources]


def _sign_bytes(raw: bytes, where: str, sources: list[str]) -> bytes:
    from attest.core.policy import PolicyInvalid
    from attest.core.policy_envelope import (
        add_signatures,
        envelope_json,
        is_envelope,
        parse_envelope,
        sign_policy,
    )
    keys = _private_keys(sources)
    try:
        if is_envelope(raw):  # N of M: the next signer adds a signature to the envelope
            return envelope_json(add_signatures(parse_envelope(raw), keys))
        return sign_policy(raw, keys)
    except PolicyInvalid as exc:
        raise _rejected(where, exc) from None


def sign(policy: Annotated[Path, typer.Argument(help="POLICY.yaml (with `name` and "
                                                "`version`), or an envelope to co-sign")],
         key: KeysOption,
         output_file: Annotated[Path | None, typer.Option(
             "-o", "--output-file", help="Write the envelope here (default: stdout)")] = None,
         ) -> None:
    """Sign a policy as a DSSE envelope (payloadType application/vnd.umec.policy+yaml)."""
    _write(_sign_bytes(_read(policy), str(policy), key), output_file)


def _public_keys(paths: list[Path]) -> dict[str, PublicKey]:
    from attest.core.policy_envelope import trusted_keys
    from keys import KeysError, load_public_key_file
    try:
        return trusted_keys([load_public_key_file(p) for p in paths])
    except KeysError as exc:
        raise KeyInvalid(exc.detail) from None


def verify(envelope: Annotated[Path, typer.Argument(help="POLICY.dsse.json")],
           key: Annotated[list[Path], typer.Option(help="Signer public key; repeatable")],
           threshold: Annotated[int, typer.Option(help="Distinct signers required")] = 1,
           node_class: Annotated[str | None, typer.Option(
               "--class", help="Also require this node class inside the signed payload")
           ] = None,
           output: Annotated[Output, typer.Option(help="table, json or yaml")] = Output.table,
           ) -> None:
    """Verify a signed policy offline: signatures, N of M distinct keys, a valid versioned
    policy (exit 0 only if it verifies)."""
    from attest.core.policy_envelope import verify_policy_envelope
    trusted = _public_keys(key)
    if not 1 <= threshold <= len(trusted):
        raise UsageError(f"--threshold {threshold} with {len(trusted)} distinct key(s)",
                         hint="pass --threshold between 1 and the number of distinct keys")
    verified = verify_policy_envelope(_read(envelope), trusted, threshold)
    if node_class is not None and verified.policy.name != node_class:
        raise CliError(f"the envelope is for class {verified.policy.name!r}, not "
                       f"{node_class!r}", check="policy.class",
                       hint="verify the envelope made for this class")
    emit({"class": verified.policy.name, "version": verified.version,
           "signers": list(verified.signers), "digest": verified.digest}, output,
          ("class", "version", "signers", "digest"))


def history(name: Annotated[str, typer.Argument(help="Node class")],
            output: Annotated[Output, typer.Option("--output", "-o",
                                                   help="table, json or yaml")] = Output.table,
            ) -> None:
    """Every version applied to a class, and every refused one (when, by which signers,
    payload digest, the check that refused it)."""
    from attest.service.policies import policy_history
    rows = [{"at": r.at.isoformat()[:19], "outcome": r.outcome, "version": r.version,
             "signers": list(r.signers), "digest": r.digest, "check": r.check,
             "detail": r.detail} for r in policy_history(_sessions(), name)]
    emit(rows, output, ("at", "outcome", "version", "signers", "digest", "check"))


def rollback(name: Annotated[str, typer.Argument(help="Node class")],
             to: Annotated[int, typer.Option("--to", help="The applied version to go back to")],
             key: Annotated[list[str] | None, typer.Option(
                 "--key", help="Sign with this key and apply (repeatable)")] = None,
             ) -> None:
    """Go back to an earlier version's content as a NEW, higher version (never an edit of an
    old one). With UMEC_POLICY_SIGNERS set and no --key, prints the document to sign."""
    from attest.service.policies import rollback_document
    document = rollback_document(_sessions(), name, to).encode()
    if key:
        _apply(_sign_bytes(document, name, key), name)
    elif _trust().enforced:
        sys.stdout.write(document.decode())
        err_console.print("sign it and apply: umec policy sign --key KEY FILE -o FILE.dsse.json"
                          " && umec policy set FILE.dsse.json", markup=False)
    else:
        _apply(document, name)


def create(from_node: Annotated[str, typer.Option("--from-node", help="A trusted node")],
           node_class: Annotated[str | None, typer.Option(
               "--class", help="Node class of the policy (default: the node's)")] = None,
           event_log: Annotated[Path | None, typer.Option(
               "--event-log", help="The node's boot event log (binary_bios_measurements, "
                                   "copied from it): allowed event digests per PCR")] = None,
           ima_list: Annotated[Path | None, typer.Option(
               "--ima-list", help="The node's IMA list (binary_runtime_measurements or the "
                                  "ASCII one): a runtime policy")] = None,
           output_file: Annotated[Path | None, typer.Option(
               "-o", "--output-file", help="Write the YAML here (default: stdout)")] = None,
           ) -> None:
    """Make a policy from a known-good node's last trusted quote (every quoted PCR pinned;
    with --event-log / --ima-list, which must replay to that quote, its event digests and a
    runtime policy), for a human to review and sign; nothing is applied."""
    from attest.core.policy import PolicyInvalid
    from attest.service.policies import node_policy
    try:
        document = node_policy(_sessions(), from_node, node_class,
                               event_log=_read_log(event_log, "--event-log"),
                               ima_list=_read_log(ima_list, "--ima-list"))
    except PolicyInvalid as exc:
        raise _rejected(from_node, exc) from None
    _write(document.encode(), output_file)


_MAX_LOG_BYTES = 64 * 1024 * 1024


def _read_log(path: Path | None, flag: str) -> bytes | None:
    """The file's bytes (bounded), or a one-line error naming the flag."""
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_LOG_BYTES + 1)
    except OSError as exc:
        raise CliError(f"{flag} {path}: {exc.strerror or exc}", check="policy.from_node_log",
                       hint="copy the file from the node and give its path") from None
    if len(data) > _MAX_LOG_BYTES:
        raise CliError(f"{flag} {path}: larger than {_MAX_LOG_BYTES >> 20} MiB",
                       check="policy.from_node_log", hint="give the node's own log file")
    return data
