"""Fixtures of the cross-domain tests: ``site`` (a real ``umec server`` with ``node-a``
trusted, on SQLite and on PostgreSQL) and ``hook`` (the admission webhook on its database); both
from tests/support/revocation_site.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.metrics import METRICS_TOKEN
from tests.support.revocation_site import DATABASES, IMAGE, Hook, Site, running_site
from tests.support.webhook import FakeVerifier, authority, key, policy_doc
from umec.localserver import ServerThread
from umec.settings import Settings
from umec.webhook_process import build_webhook


@pytest.fixture(params=DATABASES)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_database"))
    with running_site(tmp_path, url) as running:
        yield running


@pytest.fixture
def hook(site: Site, tmp_path: Path) -> Iterator[Hook]:
    signer = key()
    policies = tmp_path / "admission-policies"
    policies.mkdir()
    (policies / "ci.yaml").write_text(yaml.safe_dump(
        policy_doc("ci-signed", ["**"], [authority("ci", {"ci": signer})])))
    settings = Settings(data_dir=tmp_path / "webhook",
                        database_url=site.engine.url.render_as_string(hide_password=False),
                        admission_policy_dir=policies, metrics_token=METRICS_TOKEN)
    app, deps = build_webhook(settings)
    verifier = FakeVerifier()
    verifier.sign(IMAGE, signer)
    deps.verifier = verifier   # the one stand-in (tests/e2e/test_pod_revocation.py)
    with ServerThread(app) as http:
        yield Hook(http.url, deps, site, settings)
    deps.records.engine.dispose()  # type: ignore[union-attr]
