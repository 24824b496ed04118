"""``umec nodes|policy`` in remote mode: the CLI as a process against a real ``umec server`` on
loopback HTTPS (its operator routes, the operator token, TLS verified with the server's CA),
on SQLite and PostgreSQL. Its output is the local mode's; its database is never opened (the
remote runs get a database URL that cannot be opened); a server refusal is one stderr line with
the server's check; a CA that did not sign the server's certificate is refused."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from mec_api.tokens.keyring import KeyRotator
from tests.support.attack_env import _settings
from tests.support.cli import assert_error, clean_env, umec_process
from tests.support.pcr_policy import k3s_policy
from tests.support.registry import loopback_tls
from tests.support.simagent import SimulatedNode
from umec.app import Server, build_server
from umec.localserver import ServerThread


@dataclass
class Site:
    server: Server
    url: str
    ca: Path
    nodes: httpx.Client
    local: dict[str, str | None]   # bootstrap mode: the server's own database
    remote: dict[str, str | None]  # remote mode: no usable database at all

    def node(self, name: str) -> SimulatedNode:
        node = SimulatedNode(name, self.nodes)
        cfg = self.server.attest.config
        cfg.ek_allowlist = cfg.ek_allowlist | {
            hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()}
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
        return node


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_database")
    ca, _ = loopback_tls(tmp_path / "tls")
    # No node goes stale while a test compares the two modes' answers.
    server = build_server(_settings(tmp_path, url).model_copy(
        update={"attestation_interval_seconds": 3600.0}))
    base = {**clean_env(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    local = {**base, "UMEC_DATA_DIR": str(tmp_path / "srv"), "UMEC_DATABASE_URL": url or None}
    verify = ssl.create_default_context(cafile=str(ca))
    with ServerThread(server.app, ssl_certfile=str(tmp_path / "tls" / "server.pem"),
                      ssl_keyfile=str(tmp_path / "tls" / "server.key")) as http, \
            httpx.Client(base_url=http.url, verify=verify, timeout=30) as nodes:
        remote = {**base, "UMEC_SERVER_URL": http.url, "UMEC_SERVER_CA": str(ca),
                  "UMEC_OPERATOR_TOKEN": server.operator_token,
                  "UMEC_DATABASE_URL": "nosuchdb://never-opened"}
        yield Site(server, http.url, ca, nodes, local, remote)


def ok(args: list[str], env: dict[str, str | None]) -> str:
    code, out, err = umec_process(args, env)
    assert (code, err) == (0, ""), (args, code, out, err)
    return out


def same(site: Site, args: list[str]) -> str:
    """The command's stdout, identical in remote and local mode."""
    remote = ok(args, site.remote)
    assert remote == ok(args, site.local), args
    return remote


def test_remote_mode_answers_as_local_mode(site: Site, tmp_path: Path) -> None:
    site.node("node-a")
    bad = site.node("node-b")
    bad.tpm.extend(14, b"tampered")
    assert bad.attest()["state"] == "untrusted"

    for listing in (["nodes"], ["nodes", "-o", "json"], ["nodes", "show", "node-b"],
                    ["nodes", "show", "node-b", "-o", "yaml"], ["policy", "list"],
                    ["policy", "list", "-o", "json"], ["policy", "show", "pi-k3s"],
                    ["policy", "show", "default"], ["policy", "history", "pi-k3s"]):
        same(site, listing)
    shown = yaml.safe_load(same(site, ["nodes", "show", "node-b", "-o", "yaml"]))
    assert shown["state"] == "untrusted"
    assert [e["state"] for e in shown["events"]] == ["untrusted", "trusted"]
    text = same(site, ["nodes", "show", "node-b"])
    assert "failed policy.pcr_value: sha256:14 = " in text and "what to do: " in text
    assert "default" in same(site, ["policy", "show", "default"])
    # an acknowledgement nobody needs is refused and says why, in both modes
    for env in (site.remote, site.local):
        assert_error(umec_process(["nodes", "ack", "node-a"], env), 1,
                     "error: node.ack_not_needed: node 'node-a' is trusted")
        assert_error(umec_process(["nodes", "ack", "node-b"], env), 1,
                     "node.ack_not_needed", "(class 'pi-k3s') has no require_ack")

    # policy set / history / diff / rollback, through the server
    v2 = tmp_path / "v2.yaml"
    v2.write_text(k3s_policy("11" * 32).replace("name: pi-k3s", "name: pi-k3s\nversion: 2"))
    assert ok(["policy", "set", str(v2)], site.remote).startswith("policy 'pi-k3s' stored")
    assert ok(["policy", "diff", "pi-k3s", str(v2)], site.remote) == ""
    code, out, err = umec_process(["policy", "diff", "pi-k3s@2", "default"], site.remote)
    assert code == 1 and err == "" and out.startswith("--- pi-k3s@2\n+++ default\n")
    history = json.loads(same(site, ["policy", "history", "pi-k3s", "-o", "json"]))
    assert [h["version"] for h in history] == [None, 2]
    v3 = yaml.safe_load(ok(["policy", "set", str(v2)], site.remote) and
                        json.loads(ok(["policy", "show", "pi-k3s", "-o", "json"],
                                      site.remote))["document"])
    assert v3["version"] == 2
    assert "stored" in ok(["policy", "rollback", "pi-k3s", "--to", "2"], site.remote)
    assert yaml.safe_load(json.loads(same(site, ["policy", "show", "pi-k3s", "-o", "json"]))
                          ["document"])["version"] == 3
    code, out, _ = umec_process(["policy", "diff", "pi-k3s@2", "pi-k3s@3"], site.remote)
    assert code == 1 and "-version: 2\n+version: 3\n" in out

    # nodes rename / remove, through the server
    assert ok(["nodes", "rename", "node-b", "node-c"], site.remote).startswith(
        "renamed node-b to node-c")
    assert ok(["nodes", "remove", "node-c"], site.remote) == "removed node-c\n"
    assert [n["name"] for n in json.loads(same(site, ["nodes", "-o", "json"]))] == ["node-a"]


def test_remote_refusals_are_one_line(site: Site, tmp_path: Path) -> None:
    assert_error(umec_process(["nodes", "show", "node-z"], site.remote), 1,
                 "error: node.unknown: no node named 'node-z'", "Enrol the node first")
    assert_error(umec_process(["policy", "show", "nope"], site.remote), 1, "policy.not_found")
    code, _, err = umec_process(["policy", "diff", "nope", "pi-k3s"], site.remote)
    assert code == 2 and "policy.diff: nope: no policy 'nope'" in err
    assert_error(umec_process(["nodes"], {**site.remote, "UMEC_OPERATOR_TOKEN": "wrong"}), 1,
                 "error: operator.token: missing or wrong operator bearer token",
                 "Authorization: Bearer")
    other_ca, _ = loopback_tls(tmp_path / "other")
    assert_error(umec_process(["nodes"], {**site.remote, "UMEC_SERVER_CA": str(other_ca)}), 1,
                 "error: server.tls: ", "certificate is not verified by", str(other_ca))


def _jwks_kids(site: Site) -> set[str]:
    return {k["kid"] for k in site.nodes.get("/.well-known/jwks.json").json()["keys"]}


def test_rotate_key_remotely(site: Site) -> None:
    """``umec tokens rotate-key`` asks the server: its ring switches at once (this process),
    the JWKS lists old and new; refusals are the CLI's one line."""
    tokens = site.server.tokens
    assert tokens is not None
    before = tokens.issuer.ring.active.kid
    assert _jwks_kids(site) == {before}
    out = ok(["tokens", "rotate-key", "--overlap-seconds", "900"], site.remote)
    kid = out.split()[2].rstrip(";")
    assert out == f"active key {kid}; the previous key stays published for 900 s\n"
    assert kid != before and tokens.issuer.ring.active.kid == kid   # no reload wait
    assert _jwks_kids(site) == {before, kid}
    assert_error(umec_process(["tokens", "rotate-key", "--overlap-seconds", "60"], site.remote),
                 1, "error: tokens.rotate: overlap 60 s is shorter than the token lifetime")
    assert_error(umec_process(["tokens", "rotate-key"],
                              {**site.remote, "UMEC_OPERATOR_TOKEN": "x" * 40}), 1,
                 "error: operator.token: missing or wrong operator bearer token")
    assert tokens.issuer.ring.active.kid == kid                      # nothing changed


def test_rotate_route_refuses_without_operator_token(site: Site) -> None:
    """The attacker's view of POST /tokens/v1/signing-key/rotate: no or a wrong credential,
    a workload's own access token, bodies that do not validate, a body past 4 KiB."""
    tokens = site.server.tokens
    assert tokens is not None
    before = tokens.issuer.ring.active.kid
    path = "/tokens/v1/signing-key/rotate"
    workload_token = site.nodes.post("/oauth2/token", data={"grant_type": "x"}).json()
    assert "access_token" not in workload_token  # (none to be had here; a JWT-shaped one:)
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    for headers, body in (({}, {"overlap_seconds": 900}), ({}, {"overlap_seconds": "soon"}),
                          ({"Authorization": "Bearer wrong"}, {"overlap_seconds": 900}),
                          ({"Authorization": f"Bearer {jwt_like}"}, {"overlap_seconds": 900}),
                          ({"Authorization": f"Basic {site.server.operator_token}"},
                           {"overlap_seconds": 900})):
        # 401 whatever the body: the credential is checked before the body is validated.
        resp = site.nodes.post(path, json=body, headers=headers)
        assert resp.status_code == 401, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["check"] == "operator.token"
        assert resp.headers["www-authenticate"] == 'Bearer realm="umec-operator"'
    operator = {"Authorization": f"Bearer {site.server.operator_token}"}
    for body in ({"overlap_seconds": -1}, {"overlap_seconds": 31 * 86400},
                 {"overlap_seconds": "soon"}):
        resp = site.nodes.post(path, json=body, headers=operator)
        assert (resp.status_code, resp.json()["check"]) == (422, "request.schema"), body
    resp = site.nodes.post(path, content=b"{" + b" " * 8192 + b"}", headers={
        **operator, "Content-Type": "application/json"})
    assert resp.status_code == 413
    resp = site.nodes.post(path, json={"overlap_seconds": 302}, headers=operator)
    assert (resp.status_code, resp.json()["check"]) == (400, "tokens.rotate")  # < 300 + 5 s
    assert "plus the 5 s every server takes" in resp.json()["detail"]
    assert tokens.issuer.ring.active.kid == before
    assert _jwks_kids(site) == {before}


def test_rotating_in_a_loop_is_capped(site: Site, tmp_path: Path) -> None:
    """At most MAX_PUBLISHED_KEYS keys are published: a rotation loop gets 409, the JWKS
    stays bounded; an unwritable key directory is a typed 503, not a 500."""
    from mec_api.tokens.keyring import MAX_PUBLISHED_KEYS
    operator = {"Authorization": f"Bearer {site.server.operator_token}"}
    path = "/tokens/v1/signing-key/rotate"
    answers = [site.nodes.post(path, json={"overlap_seconds": 900}, headers=operator)
               for _ in range(MAX_PUBLISHED_KEYS + 2)]
    assert [a.status_code for a in answers] == [200] * (MAX_PUBLISHED_KEYS - 1) + [409] * 3
    refused = answers[-1].json()
    assert refused["check"] == "tokens.rotate_too_many" and "overlap ends at" in \
        refused["detail"]
    assert len(_jwks_kids(site)) == MAX_PUBLISHED_KEYS
    # A key directory that cannot be written (root ignores modes: a path under a file).
    tokens = site.server.tokens
    assert tokens is not None
    rotator = tokens.routes.rotate_key
    assert isinstance(rotator, KeyRotator)
    kept, rotator.directory = rotator.directory, tmp_path / "a-file" / "keys"
    (tmp_path / "a-file").write_text("")
    try:
        resp = site.nodes.post(path, json={"overlap_seconds": 900}, headers=operator)
    finally:
        rotator.directory = kept
    assert (resp.status_code, resp.json()["check"]) == (503, "tokens.key_directory")
    assert resp.json()["detail"] == "the key directory could not be written (Not a directory)"


def test_context_file_names_the_server(site: Site, tmp_path: Path) -> None:
    site.node("node-a")
    config = tmp_path / "xdg" / "umec"
    config.mkdir(parents=True)
    (config / "op.token").write_text(site.server.operator_token + "\n")
    (config / "config.yaml").write_text(yaml.safe_dump({
        "current-context": "site", "contexts": [
            {"name": "site", "server": site.url, "token-file": "op.token",
             "ca-file": str(site.ca)},
            {"name": "elsewhere", "server": "https://192.0.2.1:1"}]}))
    env = {k: v for k, v in site.remote.items()
           if k not in ("UMEC_SERVER_URL", "UMEC_OPERATOR_TOKEN", "UMEC_SERVER_CA")}
    assert json.loads(ok(["nodes", "-o", "json"], env))[0]["name"] == "node-a"
    assert ok(["nodes", "-o", "json"], env) == ok(["nodes", "-o", "json"], site.local)
