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

from kernel.errors import CheckedError
from umec.cli_attest import Output
from umec.cli_backend import backend
from umec.cli_errors import CliError, FileUnusable, KeyInvalid, UsageError
from umec.cli_output import emit

if TYPE_CHECKING:
    from keys import PublicKey

console = Console()
err_console = Console(stderr=True)
KeysOption = Annotated[list[str], typer.Option(
    "--key", help="Signing key: PEM or cosign key file, or env://VAR; repeatable")]


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


def _apply(raw: bytes) -> None:
    applied = backend().apply(raw)
    version = f", version {applied['version']}" if applied["version"] is not None else ""
    signed = f", signed by {len(applied['signers'])}" if applied["signers"] else ""
    state = "stored" if applied["changed"] else "unchanged"
    console.print(f"policy {applied['class']!r} {state} (generation "
                  f"{applied['generation']}{version}{signed})", markup=False)


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
    _apply(raw)


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
    emit(backend().history(name), output,
         ("at", "outcome", "version", "signers", "digest", "check"))


def rollback(name: Annotated[str, typer.Argument(help="Node class")],
             to: Annotated[int, typer.Option("--to", help="The applied version to go back to")],
             key: Annotated[list[str] | None, typer.Option(
                 "--key", help="Sign with this key and apply (repeatable)")] = None,
             ) -> None:
    """Go back to an earlier version's content as a NEW, higher version (never an edit of an
    old one). With UMEC_POLICY_SIGNERS set and no --key, prints the document to sign."""
    back = backend().rollback(name, to)
    document = str(back["document"]).encode()
    if key:
        _apply(_sign_bytes(document, name, key))
    elif back["must_sign"]:
        sys.stdout.write(document.decode())
        err_console.print("sign it and apply: umec policy sign --key KEY FILE -o FILE.dsse.json"
                          " && umec policy set FILE.dsse.json", markup=False)
    else:
        _apply(document)


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
    document = backend().from_node(from_node, node_class,
                                   _read_log(event_log, "--event-log"),
                                   _read_log(ima_list, "--ima-list"))["document"]
    _write(str(document).encode(), output_file)


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


class DiffTrouble(CliError):
    """``umec policy diff`` could not read an operand: exit 2, as diff(1) does."""

    check = "policy.diff"
    exit_code = 2


def _operand(spec: str) -> tuple[str, str]:
    """(label, YAML document) of a diff operand: a file (an envelope's payload), CLASS@VERSION
    from the class's history, or a CLASS's current policy."""
    path = Path(spec)
    if path.is_file():
        from attest.core.policy_envelope import is_envelope, parse_envelope
        raw = _read(path)
        if is_envelope(raw):
            raw = parse_envelope(raw).payload
        return spec, raw.decode("utf-8", errors="replace")
    name, at, version = spec.rpartition("@")
    if at and version.isdigit():
        return spec, str(backend().policy_version(name, int(version))["document"])
    return spec, str(backend().policy(spec)["document"])


def _operand_or_trouble(spec: str) -> tuple[str, str]:
    try:
        return _operand(spec)
    except CliError as exc:
        raise DiffTrouble(f"{spec}: {exc.detail}", hint=exc.hint) from None
    except CheckedError as exc:
        raise DiffTrouble(f"{spec}: {exc.detail}", hint=exc.hint) from None


def diff(a: Annotated[str, typer.Argument(help="CLASS, CLASS@VERSION or a FILE")],
         b: Annotated[str, typer.Argument(help="CLASS, CLASS@VERSION or a FILE")]) -> None:
    """A unified diff of two policy documents: two classes, a class and a file (YAML or a
    signed envelope), or two versions of a class's history (`pi-k3s@3 pi-k3s@4`). Exit 0 if
    they are the same, 1 if they differ, 2 if one could not be read (as diff(1))."""
    import difflib
    label_a, doc_a = _operand_or_trouble(a)
    label_b, doc_b = _operand_or_trouble(b)
    lines = list(difflib.unified_diff(doc_a.splitlines(keepends=True),
                                      doc_b.splitlines(keepends=True), label_a, label_b))
    for line in lines:
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
    raise typer.Exit(1 if lines else 0)
