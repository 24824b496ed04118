"""swtpm provisioning with a project-owned CA, EK certificates in NV, process lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attest.core.ek import (
    EkCertificateExpired,
    EkCertificateUntrusted,
    EkPublicMismatch,
    ek_certificate_matches,
    verify_ek_certificate,
)
from attest.tpm.device import Tpm
from attest.tpm.swtpm import Swtpm, SwtpmCa, SwtpmError
from tests.support.swtpm import needs_swtpm, split_chain

pytestmark = needs_swtpm
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_ca_files_stay_in_our_directory(project_ca: SwtpmCa, swtpm_node: Swtpm) -> None:
    conf = project_ca.config_file.read_text()
    assert "/etc" not in conf and "/var/lib/swtpm-localca" not in conf
    for key in ("statedir", "signingkey", "issuercert", "certserial"):
        assert f"{key} = {project_ca.directory}" in conf
    roots, inters = split_chain(swtpm_node.ca_certificate_pem())
    assert len(roots) == 1 and len(inters) == 1
    assert inters[0].issuer == roots[0].subject
    assert (project_ca.directory / "signkey.pem").exists()


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_ek_certificates_verify_with_project_ca(swtpm_node: Swtpm, kind: str) -> None:
    roots, inters = split_chain(swtpm_node.ca_certificate_pem())
    with Tpm(swtpm_node.tcti) as tpm:
        raw = tpm.ek_certificate(kind)
        ek_public = tpm.ek_public(kind)
    assert raw is not None
    cert = verify_ek_certificate(raw, roots, inters, now=NOW)
    # The certificate is for the EK the default TCG template re-creates (L-1 / L-2).
    assert ek_certificate_matches(cert, ek_public)
    key = cert.public_key()
    if kind == "rsa":
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    # The chain really is needed: the root alone does not reach the leaf.
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(raw, roots, [], now=NOW)


def test_ek_certificate_does_not_match_the_other_ek(swtpm_node: Swtpm) -> None:
    with Tpm(swtpm_node.tcti) as tpm:
        rsa_cert = tpm.ek_certificate("rsa")
        ecc_public = tpm.ek_public("ecc")
    assert rsa_cert is not None
    with pytest.raises(EkPublicMismatch):
        ek_certificate_matches(x509.load_der_x509_certificate(rsa_cert), ecc_public)


def test_untrusted_manufacturer_is_rejected(swtpm_node: Swtpm, foreign_swtpm: Swtpm) -> None:
    roots, inters = split_chain(swtpm_node.ca_certificate_pem())
    f_roots, f_inters = split_chain(foreign_swtpm.ca_certificate_pem())
    with Tpm(foreign_swtpm.tcti) as tpm:
        foreign = tpm.ek_certificate("ecc")
    with Tpm(swtpm_node.tcti) as tpm:
        ours = tpm.ek_certificate("ecc")
    assert foreign is not None and ours is not None
    verify_ek_certificate(foreign, f_roots, f_inters, now=NOW)  # valid for its own CA
    # Both swtpm CAs use the same names ("swtpm-localca"): only the keys differ.
    assert f_inters[0].subject == inters[0].subject
    with pytest.raises(EkCertificateUntrusted, match="swtpm-localca"):
        verify_ek_certificate(foreign, roots, inters, now=NOW)
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(foreign, roots, [*inters, *f_inters], now=NOW)
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(ours, f_roots, f_inters, now=NOW)


def test_swtpm_ek_certificate_validity_window(swtpm_node: Swtpm) -> None:
    roots, inters = split_chain(swtpm_node.ca_certificate_pem())
    with Tpm(swtpm_node.tcti) as tpm:
        raw = tpm.ek_certificate("rsa")
    assert raw is not None
    leaf = x509.load_der_x509_certificate(raw)
    # swtpm_localca issues certificates valid until 9999-12-31T23:59:59Z, the largest notAfter
    # there is; the last microsecond of year 9999 is already past it.
    after = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert leaf.not_valid_after_utc < after
    with pytest.raises(EkCertificateExpired):
        verify_ek_certificate(raw, roots, inters, now=after)
    with pytest.raises(EkCertificateExpired):
        verify_ek_certificate(raw, roots, inters, now=datetime(2000, 1, 1, tzinfo=UTC))


def test_shared_ca_makes_distinct_tpms(tmp_path: Path, project_ca: SwtpmCa,
                                       swtpm_node: Swtpm) -> None:
    roots, inters = split_chain(project_ca.certificate_chain_pem())
    with Swtpm(tmp_path / "second", project_ca) as second, Tpm(second.tcti) as tpm2, \
            Tpm(swtpm_node.tcti) as tpm1:
        assert tpm2.ek_public("ecc") != tpm1.ek_public("ecc")
        raw = tpm2.ek_certificate("rsa")
        assert raw is not None
        verify_ek_certificate(raw, roots, inters, now=NOW)


def test_state_survives_restart_and_stop_kills_the_process(tmp_path: Path,
                                                           project_ca: SwtpmCa) -> None:
    sw = Swtpm(tmp_path / "node", project_ca)
    with sw:
        assert sw._proc is not None
        pid = sw._proc.pid
        with Tpm(sw.tcti) as tpm:
            ek = tpm.ek_public("rsa")
    assert not _alive(pid) and not sw.running
    with pytest.raises(SwtpmError):
        _ = sw.tcti
    with sw, Tpm(sw.tcti) as tpm:  # provisioning is not repeated; same EK seed
        assert tpm.ek_public("rsa") == ek
        assert tpm.ek_certificate("ecc") is not None
    sw.stop()  # idempotent


def test_stop_on_exception_inside_the_block(tmp_path: Path, project_ca: SwtpmCa) -> None:
    sw = Swtpm(tmp_path / "node", project_ca)
    pid = 0
    with pytest.raises(RuntimeError, match="boom"), sw:
        assert sw._proc is not None
        pid = sw._proc.pid
        raise RuntimeError("boom")
    assert pid and not _alive(pid)


def test_swtpm_dies_with_a_crashed_parent(tmp_path: Path, project_ca: SwtpmCa) -> None:
    # Provision here so the child only starts swtpm; then SIGKILL the child (no cleanup runs).
    Swtpm(tmp_path / "node", project_ca).provision()
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from attest.tpm.swtpm import Swtpm, SwtpmCa\n"
        f"ca = SwtpmCa(Path({str(project_ca.directory)!r}))\n"
        f"sw = Swtpm(Path({str(tmp_path / 'node')!r}), ca)\n"
        "sw.start()\n"
        "print(sw._proc.pid, flush=True)\n"
        "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        swtpm_pid = int(child.stdout.readline())
        assert _alive(swtpm_pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(swtpm_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(swtpm_pid), "swtpm outlived its crashed parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
