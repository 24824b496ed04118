"""swtpm fixtures for the TPM adapter tests: one project CA ("manufacturer"), TPMs made by it, and a
TPM from another, untrusted manufacturer. Import the fixtures into a test module to use them."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator

import pytest
from cryptography import x509

from attest.tpm.swtpm import Swtpm, SwtpmCa, swtpm_available

_HAVE_PYTSS = importlib.util.find_spec("tpm2_pytss") is not None
_REASON = ("swtpm/swtpm_setup/swtpm_localca not on PATH (apt-get install swtpm swtpm-tools)"
           if not swtpm_available() else "tpm2-pytss not installed (pip install .[node])")
needs_swtpm = [pytest.mark.swtpm,
               pytest.mark.skipif(not (swtpm_available() and _HAVE_PYTSS), reason=_REASON)]
needs_tpm2_tools = pytest.mark.skipif(
    shutil.which("tpm2_checkquote") is None or shutil.which("tpm2_makecredential") is None,
    reason="tpm2-tools not installed (apt-get install tpm2-tools): used as a test oracle")


def split_chain(pem: bytes) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(roots, intermediates) of a PEM bundle: self-issued certificates are the roots."""
    certs = x509.load_pem_x509_certificates(pem)
    roots = [c for c in certs if c.issuer == c.subject]
    return roots, [c for c in certs if c.issuer != c.subject]


@pytest.fixture(scope="session")
def project_ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    return SwtpmCa(tmp_path_factory.mktemp("project-ca"), manufacturer="umec")


@pytest.fixture(scope="session")
def swtpm_node(tmp_path_factory: pytest.TempPathFactory,
               project_ca: SwtpmCa) -> Iterator[Swtpm]:
    """A running swtpm manufactured by ``project_ca`` (shared by the session: flush discipline
    is part of what is tested, so tests must leave it with no transient objects)."""
    with Swtpm(tmp_path_factory.mktemp("swtpm-node"), project_ca) as tpm:
        yield tpm


@pytest.fixture(scope="session")
def foreign_swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    """A swtpm from another manufacturer (its own swtpm_localca)."""
    ca = SwtpmCa(tmp_path_factory.mktemp("foreign-ca"), manufacturer="rogue")
    with Swtpm(tmp_path_factory.mktemp("swtpm-foreign"), ca) as tpm:
        yield tpm
