"""Signed, versioned appraisal policies (issue 13, part 4) over the real path: ``umec policy
sign|set|verify|history|rollback`` as the CLI runs them, against SQLite and PostgreSQL, with
UMEC_POLICY_SIGNERS / UMEC_POLICY_THRESHOLD. Every attack the issue names is refused with its
named check, the class keeps its previous policy, and the refusal is an event."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from attest.core.policy_envelope import key_id
from keys import generate_private_key, save_private_key
from keys.storage import save_public_key
from tests.support.cli import assert_error, clean_env, umec

POLICY = """name: pi-k3s
selection: {{sha256: [0, 14]}}
pcrs:
  sha256:
    14: ["{pcr}"]
version: {version}
"""


class Signer:
    def __init__(self, directory: Path, name: str) -> None:
        self.key = generate_private_key()
        self.private = directory / f"{name}.key"
        self.public = directory / f"{name}.pub"
        save_private_key(self.private, self.key)
        save_public_key(self.public, self.key)
        self.id = key_id(self.key)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_database")
    return Site(tmp_path, url)


class Site:
    """A control plane's database and settings, with signers a, b (configured) and c (not)."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.dir = tmp_path
        self.a, self.b, self.c = (Signer(tmp_path, n) for n in "abc")
        self.env = clean_env(tmp_path)
        if url:
            self.env["UMEC_DATABASE_URL"] = url
        self.configure([self.a, self.b], threshold=1)

    def configure(self, signers: list[Signer], threshold: int) -> None:
        self.env["UMEC_POLICY_SIGNERS"] = json.dumps([str(s.public) for s in signers])
        self.env["UMEC_POLICY_THRESHOLD"] = str(threshold)

    def run(self, *args: str) -> tuple[int, str, str]:
        return umec(list(args), self.env)

    def policy(self, version: int, pcr: str = "ab", name: str = "p") -> Path:
        path = self.dir / f"{name}-{version}.yaml"
        path.write_text(POLICY.format(pcr=pcr * 32, version=version))
        return path

    def signed(self, version: int, *signers: Signer, pcr: str = "ab") -> Path:
        out = self.dir / f"p-{version}-{pcr}-{len(signers)}.dsse.json"
        keys = [arg for s in signers for arg in ("--key", str(s.private))]
        code, _stdout, stderr = self.run("policy", "sign", str(self.policy(version, pcr)),
                                        *keys, "-o", str(out))
        assert code == 0, stderr
        return out

    def shown(self) -> str:
        code, stdout, stderr = self.run("policy", "show", "pi-k3s")
        assert code == 0, stderr
        return stdout

    def history(self) -> list[dict[str, object]]:
        code, stdout, stderr = self.run("policy", "history", "pi-k3s", "--output", "json")
        assert code == 0, stderr
        rows: list[dict[str, object]] = json.loads(stdout)
        return rows


def _refused(site: Site, path: Path, check: str) -> None:
    """Refused with ``check``; the class keeps version 1's policy; the refusal is an event."""
    before = site.shown()
    assert_error(site.run("policy", "set", str(path)), 1, f"error: {check}: ")
    assert site.shown() == before
    last = site.history()[-1]
    assert (last["outcome"], last["check"]) == ("refused", check)


def test_signed_policy_applies_and_verifies(site: Site) -> None:
    envelope = site.signed(1, site.a)
    code, out, err = site.run("policy", "set", str(envelope))
    assert code == 0, err
    assert "version 1" in out and "ab" * 32 in site.shown()
    code, out, err = site.run("policy", "verify", str(envelope), "--key", str(site.a.public),
                              "--class", "pi-k3s", "--output", "json")
    assert code == 0, err
    assert json.loads(out)["signers"] == [site.a.id]
    assert_error(site.run("policy", "verify", str(envelope), "--key", str(site.c.public)),
                 1, "policy.signer")
    # The same envelope again is no new version and no refusal: a restart re-applying its
    # policy directory stays quiet.
    assert site.run("policy", "set", str(envelope))[0] == 0
    assert [r["outcome"] for r in site.history()] == ["applied"]


def test_unsigned_policy_refused_when_signers_are_set(site: Site) -> None:
    assert_error(site.run("policy", "set", str(site.policy(1))), 1, "policy.unsigned",
                 "UMEC_POLICY_SIGNERS")
    assert site.run("policy", "show", "pi-k3s")[0] == 1
    assert site.history()[-1]["check"] == "policy.unsigned"


def test_wrong_signer_refused(site: Site) -> None:
    assert site.run("policy", "set", str(site.signed(1, site.a)))[0] == 0
    _refused(site, site.signed(2, site.c, pcr="cd"), "policy.signer")


def test_rollback_refused(site: Site) -> None:
    old = site.signed(1, site.a)
    assert site.run("policy", "set", str(site.signed(2, site.a, pcr="cd")))[0] == 0
    before = site.shown()
    assert_error(site.run("policy", "set", str(old)), 1, "policy.rollback")
    assert site.shown() == before and "cd" * 32 in before
    # Equal version, other content: refused too (one version, one content).
    assert_error(site.run("policy", "set", str(site.signed(2, site.a, pcr="ef"))), 1,
                 "policy.rollback")
    assert site.shown() == before


def test_below_threshold_refused(site: Site) -> None:
    site.configure([site.a, site.b], threshold=2)
    assert site.run("policy", "set", str(site.signed(1, site.a, site.b)))[0] == 0
    _refused(site, site.signed(2, site.a, pcr="cd"), "policy.threshold")
    # An unknown key's signature does not make up the difference.
    _refused(site, site.signed(3, site.a, site.c, pcr="cd"), "policy.threshold")


def test_duplicate_signatures_of_one_key_count_once(site: Site) -> None:
    site.configure([site.a, site.b], threshold=2)
    assert site.run("policy", "set", str(site.signed(1, site.a, site.b)))[0] == 0
    envelope = site.signed(2, site.a, pcr="cd")
    doc = json.loads(envelope.read_text())
    doc["signatures"] = doc["signatures"] * 2  # the same key's signature, twice
    envelope.write_text(json.dumps(doc))
    _refused(site, envelope, "policy.threshold")


def test_same_key_twice_in_signers_is_one_signer(site: Site) -> None:
    copy = site.dir / "a-copy.pub"
    copy.write_bytes(site.a.public.read_bytes())
    site.env["UMEC_POLICY_SIGNERS"] = json.dumps([str(site.a.public), str(copy)])
    site.env["UMEC_POLICY_THRESHOLD"] = "2"
    assert_error(site.run("policy", "set", str(site.signed(1, site.a))), 2,
                 "UMEC_POLICY_THRESHOLD")


def test_tampered_envelope_refused(site: Site) -> None:
    assert site.run("policy", "set", str(site.signed(1, site.a)))[0] == 0
    envelope = site.signed(2, site.a, pcr="cd")
    doc = json.loads(envelope.read_text())
    payload = base64.b64decode(doc["payload"]).replace(b"cd" * 32, b"ee" * 32)
    doc["payload"] = base64.b64encode(payload).decode()
    envelope.write_text(json.dumps(doc))
    _refused(site, envelope, "policy.signature")


def test_co_signing_meets_the_threshold(site: Site) -> None:
    site.configure([site.a, site.b], threshold=2)
    envelope = site.signed(1, site.a)
    assert_error(site.run("policy", "set", str(envelope)), 1, "policy.threshold")
    assert site.run("policy", "sign", str(envelope), "--key", str(site.b.private),
                    "-o", str(envelope))[0] == 0
    code, _out, err = site.run("policy", "set", str(envelope))
    assert code == 0, err
    signers = site.history()[-1]["signers"]
    assert isinstance(signers, list) and sorted(signers) == sorted([site.a.id, site.b.id])


def test_history_and_signed_rollback(site: Site) -> None:
    assert site.run("policy", "set", str(site.signed(1, site.a)))[0] == 0
    assert site.run("policy", "set", str(site.signed(2, site.a, pcr="cd")))[0] == 0
    # Signers are set: without --key, rollback prints the new document to sign, applies nothing.
    code, out, err = site.run("policy", "rollback", "pi-k3s", "--to", "1")
    assert code == 0, err
    assert "version: 3" in out and "ab" * 32 in out and "cd" * 32 in site.shown()
    code, out, err = site.run("policy", "rollback", "pi-k3s", "--to", "1", "--key",
                              str(site.a.private))
    assert code == 0, err
    shown = site.shown()
    assert "ab" * 32 in shown and "version: 3" in shown
    applied = [(r["version"], r["outcome"]) for r in site.history()]
    assert applied == [(1, "applied"), (2, "applied"), (3, "applied")]
    assert_error(site.run("policy", "rollback", "pi-k3s", "--to", "9", "--key",
                          str(site.a.private)), 1, "policy.history")
    code, out, err = site.run("policy", "history", "pi-k3s", "--output", "yaml")
    assert code == 0 and "digest: sha256:" in out


def test_unsigned_mode_rollback_applies_directly(site: Site) -> None:
    del site.env["UMEC_POLICY_SIGNERS"]
    assert site.run("policy", "set", str(site.policy(1)))[0] == 0
    assert site.run("policy", "set", str(site.policy(2, pcr="cd")))[0] == 0
    assert_error(site.run("policy", "set", str(site.policy(1))), 1, "policy.rollback")
    assert site.run("policy", "rollback", "pi-k3s", "--to", "1")[0] == 0
    assert "ab" * 32 in site.shown() and "version: 3" in site.shown()
