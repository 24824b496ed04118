"""Shared fixtures: a manufacturer CA, swtpm nodes, a server on loopback, PostgreSQL databases."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

# CI runs the fuzz tests derandomized (same examples every run: a red CI is reproducible and
# never a coin toss); local runs keep exploring new examples.
from hypothesis import settings as hypothesis_settings

from attest.tpm.swtpm import Swtpm, SwtpmCa, swtpm_available

hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

PG_ADMIN_URL = os.environ.get("UMEC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

requires_swtpm = pytest.mark.skipif(not swtpm_available(),
                                    reason="swtpm/swtpm_setup not installed (scripts/setup.sh)")


@pytest.fixture(scope="session")
def manufacturer_ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    return SwtpmCa(tmp_path_factory.mktemp("manufacturer-ca"))


@pytest.fixture(scope="session")
def provisioned_tpm_dirs(tmp_path_factory: pytest.TempPathFactory,
                         manufacturer_ca: SwtpmCa) -> Callable[[str], Path]:
    """Provision TPMs once per session (swtpm_setup is slow) and hand out copies of their state."""
    import shutil
    cache: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("tpm-templates")

    def template(name: str) -> Path:
        if name not in cache:
            tpm = Swtpm(base / name, manufacturer_ca)
            tpm.provision()
            cache[name] = base / name
        dest = tmp_path_factory.mktemp(f"tpm-{name}")
        shutil.copytree(cache[name], dest, dirs_exist_ok=True)
        return dest
    return template


@pytest.fixture
def swtpm_factory(provisioned_tpm_dirs: Callable[[str], Path],
                  manufacturer_ca: SwtpmCa) -> Iterator[Callable[[str], Swtpm]]:
    """Start a fresh copy of the provisioned TPM ``name`` (same EK as every other copy)."""
    if not swtpm_available():
        pytest.skip("swtpm not installed (scripts/setup.sh)")
    started: list[Swtpm] = []

    def start(name: str) -> Swtpm:
        tpm = Swtpm(provisioned_tpm_dirs(name), manufacturer_ca).start()
        started.append(tpm)
        return tpm
    yield start
    for tpm in started:
        tpm.stop()


def k3s_policy(app_pcr_value: str | None = None, **extra: object) -> str:
    doc: dict[str, object] = {"name": "pi-k3s", "selection": {"sha256": [0, 1, 2, 3, 7, 14]},
                              **extra}
    if app_pcr_value is not None:
        doc["pcrs"] = {"sha256": {14: [app_pcr_value]}}
    return yaml.safe_dump(doc)


def pcr_after(*measurements: bytes) -> str:
    value = bytes(32)
    for m in measurements:
        value = hashlib.sha256(value + hashlib.sha256(m).digest()).digest()
    return value.hex()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://")
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc} (scripts/services.sh)")
    name = f"umec_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn, contextlib.suppress(Exception):
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def http_client() -> Callable[[str], httpx.Client]:
    clients: list[httpx.Client] = []

    def make(url: str) -> httpx.Client:
        c = httpx.Client(base_url=url, timeout=30)
        clients.append(c)
        return c
    yield make  # type: ignore[misc]
    for c in clients:
        c.close()
