"""Settings, JSON logs, health and metrics endpoints, migrations."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect

from tests.support.metrics import METRICS_TOKEN, metrics_auth
from umec.app import build_server
from umec.db import open_database
from umec.localserver import ServerThread
from umec.logs import JsonFormatter
from umec.settings import Settings


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "umec.yaml"
    cfg.write_text("listen_port: 9000\nnode_name: from-file\nek_allowlist: [aa, bb]\n")
    monkeypatch.setenv("UMEC_CONFIG", str(cfg))
    monkeypatch.setenv("UMEC_NODE_NAME", "from-env")
    s = Settings()
    assert s.listen_port == 9000 and s.node_name == "from-env"  # env wins over the file
    assert s.ek_allowlist == ["aa", "bb"]


def test_settings_reject_unknown_keys_and_bad_values(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "umec.yaml"
    cfg.write_text("listen_prot: 9000\n")
    monkeypatch.setenv("UMEC_CONFIG", str(cfg))
    with pytest.raises(ValueError, match="listen_prot"):
        Settings()
    monkeypatch.delenv("UMEC_CONFIG")
    monkeypatch.setenv("UMEC_LISTEN_PORT", "many")
    with pytest.raises(ValueError, match="listen_port"):
        Settings()


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d")
    assert s.resolved_database_url() == f"sqlite:///{(tmp_path / 'd' / 'umec.db').resolve()}"


def test_migrations_create_schema_idempotently_with_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine, _ = open_database(url)
    engine2, _ = open_database(url)  # second start: nothing to do, no error
    tables = set(inspect(engine2).get_table_names())
    assert {"attest_nodes", "attest_events", "attest_policies",
            "leases", "admission_pods", "alembic_version"} <= tables
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_json_log_lines() -> None:
    record = logging.LogRecord("umec.x", logging.WARNING, __file__, 1, "node %s", ("a",), None)
    record.node = "node-a"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "node a" and entry["level"] == "warning" and entry["node"] == "node-a"


def test_health_ready_metrics_and_problem_errors(tmp_path: Path) -> None:
    server = build_server(Settings(data_dir=tmp_path / "srv", metrics_token=METRICS_TOKEN))
    with ServerThread(server.app) as http, httpx.Client(base_url=http.url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        client.post("/attest/v1/nodes/nobody/challenge")
        metrics = client.get("/metrics", headers=metrics_auth()).text
        assert 'umec_http_requests_total{route="/attest/v1/nodes/{node}/challenge",status="404"}' \
            in metrics
        bad = client.post("/attest/v1/nodes", json={"name": "UPPER case!"})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["check"] == "request.schema"
        jwks = client.get("/attest/v1/jwks.json").json()
        assert jwks["keys"] and jwks["keys"][0]["kid"] == server.keys.active.kid


def test_revision_ids_follow_the_file_name_convention() -> None:
    """umec.db skips Alembic when the database is at the newest file's revision id."""
    import re

    from umec.db import MIGRATIONS
    for path in (MIGRATIONS / "versions").glob("*.py"):
        declared = re.search(r"^revision = '(\w+)'", path.read_text(), re.M)
        assert declared is not None and declared.group(1) == path.name.split("_", 1)[0], path


def test_already_migrated_database_does_not_load_alembic(tmp_path: Path) -> None:
    import subprocess
    import sys
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_database(url)
    code = (f"import sys; from umec.db import open_database; open_database({url!r}); "
            "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
