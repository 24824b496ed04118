"""Provision and run a software TPM 2.0 (swtpm) with EK certificates from a project-owned CA.

Used by the test-suite and by ``umec demo``; it is development tooling, never used on a real node.

Steps, in order (each one is idempotent, so a state directory can be reused across runs):

1. **Manufacturer CA** (:class:`SwtpmCa`). ``swtpm_localca`` is configured through a
   ``swtpm-localca.conf`` + ``swtpm-localca.options`` pair that *we* write into a directory we own
   (``statedir``, ``signingkey``, ``issuercert`` and ``certserial`` all point inside it), so neither
   ``/etc/swtpm-localca.conf`` nor the system default ``/var/lib/swtpm-localca`` is ever touched. On
   first use ``swtpm_localca`` creates a root CA (``swtpm-localca-rootca-cert.pem``) and an
   intermediate (``issuercert.pem``) that signs the EK certificates. Several TPMs may share one CA
   directory (one "manufacturer"); a TPM provisioned with another directory is from an untrusted
   manufacturer as far as a verifier configured with the first CA is concerned.
2. **Manufacturing** (:meth:`Swtpm.provision`): ``swtpm_setup --tpm2 --create-ek-cert
   --create-platform-cert --config <our swtpm_setup.conf>`` creates the RSA-2048 EK (TCG template
   L-1) with its certificate in NV 0x01C00002 and a platform certificate. swtpm 0.7 creates its ECC
   EK on NIST P-384 (high-range index 0x01C00016, left in place) and cannot be told otherwise,
   so we add the ECC NIST P-256 EK ourselves: start the TPM, create the L-2 EK, have the *same*
   ``swtpm_localca`` issue its certificate and store it at 0x01C0000A with the platform
   hierarchy (whose auth is empty after every TPM2_Startup), as a TPM vendor's line does.
3. **Running** (:meth:`Swtpm.start`): ``swtpm socket --tpm2 --server type=tcp,port=P --ctrl
   type=tcp,port=P+1 --flags not-need-init,startup-clear`` bound to 127.0.0.1 on free ports;
   :attr:`Swtpm.tcti` is ``swtpm:host=127.0.0.1,port=P``.
4. **Stopping** (:meth:`Swtpm.stop`): the process runs in its own process group, which is sent
   SIGTERM then SIGKILL. On Linux the child also gets ``PR_SET_PDEATHSIG`` so it dies with the
   Python process even when that process is killed without running finalizers, and an ``atexit``
   hook stops instances that were never stopped explicitly. PDEATHSIG fires when the *thread*
   that started swtpm ends, so start long-lived instances from the main thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

from attest.core.errors import AttestationError

EK_CERT_INDEX_RSA = 0x01C00002
EK_CERT_INDEX_ECC = 0x01C0000A
_LOCALCA_CONF = "swtpm-localca.conf"
_LOCALCA_OPTIONS = "swtpm-localca.options"
_ROOT_CERT = "swtpm-localca-rootca-cert.pem"
_ISSUER_CERT = "issuercert.pem"
# What swtpm_setup passes to swtpm_localca for its own EKs; we pass the same for the P-256 EK so
# all certificates of one TPM describe the same device.
_TPM_IDENTITY = ("--tpm-spec-family", "2.0", "--tpm-spec-level", "0", "--tpm-spec-revision", "164",
                 "--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm",
                 "--tpm-version", "id:20191023")

_live: weakref.WeakSet[Swtpm] = weakref.WeakSet()


class SwtpmError(AttestationError):
    """swtpm could not be provisioned or started."""

    check = "swtpm.run"
    hint = ("Install the Debian packages swtpm and swtpm-tools, check the log named in the error, "
            "and remove a half-provisioned state directory before retrying.")


def swtpm_available() -> bool:
    """True when the swtpm binaries this module needs are on PATH."""
    return all(shutil.which(b) for b in ("swtpm", "swtpm_setup", "swtpm_localca"))


class SwtpmCa:
    """A project-owned ``swtpm_localca`` certificate authority living in ``directory``."""

    def __init__(self, directory: Path, manufacturer: str = "umec") -> None:
        self.directory = Path(directory).resolve()
        self.manufacturer = manufacturer
        self.ensure_config()

    @property
    def config_file(self) -> Path:
        return self.directory / _LOCALCA_CONF

    @property
    def options_file(self) -> Path:
        return self.directory / _LOCALCA_OPTIONS

    def ensure_config(self) -> None:
        """Write the localca configuration (never overwriting an existing CA's files)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        d = self.directory
        if not self.config_file.exists():
            self.config_file.write_text(
                f"statedir = {d}\nsigningkey = {d}/signkey.pem\n"
                f"issuercert = {d}/{_ISSUER_CERT}\ncertserial = {d}/certserial\n")
        if not self.options_file.exists():
            self.options_file.write_text(
                f"--platform-manufacturer {self.manufacturer}\n--platform-version 2.1\n"
                "--platform-model swtpm\n")

    def certificate_chain_pem(self) -> bytes:
        """The intermediate (EK issuer) then the root, PEM; empty until the first TPM is made."""
        out = b""
        for name in (_ISSUER_CERT, _ROOT_CERT):
            path = self.directory / name
            if path.exists():
                out += path.read_bytes()
        return out

    def root_certificate_pem(self) -> bytes:
        return (self.directory / _ROOT_CERT).read_bytes()

    def intermediate_certificate_pem(self) -> bytes:
        return (self.directory / _ISSUER_CERT).read_bytes()

    def issue_ek_certificate(self, ek_key_param: str, workdir: Path) -> bytes:
        """Have swtpm_localca issue an EK certificate (DER) for the ``--ek`` key parameter."""
        out = Path(tempfile.mkdtemp(dir=workdir, prefix="ekcert."))
        try:
            _run(["swtpm_localca", "--type", "ek", "--ek", ek_key_param, "--dir", str(out),
                  *_TPM_IDENTITY, "--tpm2", "--configfile", str(self.config_file),
                  "--optsfile", str(self.options_file)], what="swtpm_localca")
            return (out / "ek.cert").read_bytes()
        finally:
            shutil.rmtree(out, ignore_errors=True)


def _run(cmd: list[str], *, what: str, timeout: float = 60.0) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SwtpmError(f"{what} could not run: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise SwtpmError(f"{what} exited {proc.returncode}: {tail}")


def _free_port_pair(host: str) -> int:
    """A port P with P and P+1 both free right now (swtpm needs server P and ctrl P+1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind((host, port + 1))
        except OSError:
            continue
        return port
    raise SwtpmError(f"no free pair of TCP ports on {host}")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL swtpm when the process
    # (thread) that started it dies, so a crashed test run leaves no swtpm behind.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class Swtpm:
    """A provisioned swtpm listening on 127.0.0.1; use as a context manager."""

    def __init__(self, state_dir: Path, ca: SwtpmCa | Path, *, host: str = "127.0.0.1",
                 pcr_banks: str = "sha1,sha256") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.ca = ca if isinstance(ca, SwtpmCa) else SwtpmCa(Path(ca))
        self.host = host
        self.pcr_banks = pcr_banks
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.state_dir / "swtpm.log"

    # --- provisioning -------------------------------------------------------------------------

    @property
    def _tpm_dir(self) -> Path:
        return self.state_dir / "tpm"

    def is_provisioned(self) -> bool:
        return (self.state_dir / "provisioned").exists()

    def provision(self) -> None:
        """Manufacture the TPM (EKs, EK certs, platform cert) unless already done."""
        if self.is_provisioned():
            return
        self._tpm_dir.mkdir(parents=True, exist_ok=True)
        setup_conf = self.state_dir / "swtpm_setup.conf"
        setup_conf.write_text(
            "create_certs_tool = /usr/bin/swtpm_localca\n"
            f"create_certs_tool_config = {self.ca.config_file}\n"
            f"create_certs_tool_options = {self.ca.options_file}\n"
            f"active_pcr_banks = {self.pcr_banks}\n")
        _run(["swtpm_setup", "--tpm2", "--tpmstate", str(self._tpm_dir), "--create-ek-cert",
              "--create-platform-cert", "--config", str(setup_conf), "--pcr-banks",
              self.pcr_banks, "--overwrite", "--logfile", str(self.state_dir / "setup.log")],
             what="swtpm_setup")
        self._start_process()
        try:
            self._add_p256_ek_certificate()
        finally:
            self._stop_process()
        (self.state_dir / "provisioned").write_text("ok\n")

    def _add_p256_ek_certificate(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        from attest.tpm.device import Tpm  # tpm2-pytss: only needed on the node/dev side

        with Tpm(self.tcti) as tpm:
            if tpm.ek_certificate("ecc") is not None:
                return
            key = tpm.ek_public_key("ecc")
            assert isinstance(key, ec.EllipticCurvePublicKey)
            nums = key.public_numbers()
            param = f"x={nums.x:064x},y={nums.y:064x},id=secp256r1"
            der = self.ca.issue_ek_certificate(param, self.state_dir)
            tpm.write_platform_nv(EK_CERT_INDEX_ECC, der)

    # --- running ------------------------------------------------------------------------------

    @property
    def tcti(self) -> str:
        if self.port is None:
            raise SwtpmError("swtpm is not running")
        return f"swtpm:host={self.host},port={self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ca_certificate_pem(self) -> bytes:
        """The CA chain (intermediate, then root) that issued this TPM's EK certificates."""
        return self.ca.certificate_chain_pem()

    def start(self) -> Swtpm:
        self.provision()
        if not self.running:
            self._start_process()
        return self

    def stop(self) -> None:
        self._stop_process()

    def __enter__(self) -> Swtpm:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _start_process(self) -> None:
        last = ""
        for _attempt in range(5):  # a free port can be taken between probing and binding
            port = _free_port_pair(self.host)
            cmd = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self._tpm_dir}",
                   "--server", f"type=tcp,port={port},bindaddr={self.host}",
                   "--ctrl", f"type=tcp,port={port + 1},bindaddr={self.host}",
                   "--flags", "not-need-init,startup-clear", "--log", f"file={self._log}"]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    preexec_fn=_die_with_parent)
            self._proc, self.port = proc, port
            _live.add(self)
            if self._wait_listening(port, proc):
                return
            last = proc.stderr.read().decode(errors="replace")[-1000:] if proc.stderr else ""
            self._stop_process()
        raise SwtpmError(f"swtpm did not start: {last}")

    def _wait_listening(self, port: int, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, port + 1), timeout=0.5):
                    pass
                # The ctrl port is bound right after the server port; probe the server port too.
                with socket.create_connection((self.host, port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _stop_process(self) -> None:
        proc, self._proc, self.port = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()
        _live.discard(self)


@atexit.register
def _stop_all() -> None:
    for tpm in list(_live):
        tpm.stop()
