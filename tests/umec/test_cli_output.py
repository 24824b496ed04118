"""``umec --version`` and ``--output table|json|yaml`` on the listings, run as a process with
its stdout a pipe (what a script sees): no box drawing, no cut values, no colour codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.attack_env import running_env, trusted
from tests.support.cli import clean_env, umec_process
from umec.cli_output import package_version, plain_table

BOX = set("─━│┃┌┏┐┓└┗┘┛├┣┤┫┬┳┴┻┼╋═║╔╗╚╝╭╮╯╰╇╈╉╊…")


def no_box(text: str) -> None:
    assert not BOX & set(text), text
    assert "\x1b[" not in text, text


def test_version_is_the_package_version(tmp_path: Path) -> None:
    code, out, err = umec_process(["--version"], clean_env(tmp_path))
    assert (code, out, err) == (0, f"umec {package_version()}\n", "")
    assert package_version() == "0.1.0"


def test_listings_in_every_output_format_when_piped(tmp_path: Path) -> None:
    with running_env(tmp_path, "") as env:
        trusted(env, "node-a")
        bad = trusted(env, "node-b")
        bad.tpm.extend(14, b"tampered")
        assert bad.attest()["state"] == "untrusted"
    cli = {**clean_env(tmp_path), "UMEC_DATA_DIR": str(tmp_path / "srv")}
    code, out, _ = umec_process(["nodes"], cli)
    assert code == 0
    no_box(out)
    header, *lines = out.splitlines()
    assert header.split() == ["node", "class", "state", "since", "last", "pass", "why"]
    assert lines[0].split()[:3] == ["node-a", "pi-k3s", "trusted"]
    assert lines[1].split()[:3] == ["node-b", "pi-k3s", "untrusted"]
    assert "policy.pcr_value: sha256:14 = " in lines[1]  # the whole detail, never cut
    for flag in (["-o", "json"], ["--output", "json"], ["--json"]):
        code, out, _ = umec_process(["nodes", *flag], cli)
        assert code == 0 and [n["state"] for n in json.loads(out)] == ["trusted", "untrusted"]
    code, out, _ = umec_process(["nodes", "-o", "yaml"], cli)
    assert [n["name"] for n in yaml.safe_load(out)] == ["node-a", "node-b"]

    code, out, _ = umec_process(["policy", "list"], cli)
    no_box(out)
    assert out.splitlines()[0].split() == ["class", "generation", "version", "updated",
                                           "source"]
    assert out.splitlines()[1].split() == ["default", "-", "-", "-", "built-in"]
    assert out.splitlines()[2].split()[:2] == ["pi-k3s", "1"]
    assert out.splitlines()[2].split()[-1] == "stored"
    code, out, _ = umec_process(["policy", "list", "-o", "json"], cli)
    assert [(p["class"], p["source"]) for p in json.loads(out)] == [("default", "built-in"),
                                                                    ("pi-k3s", "stored")]
    code, out, _ = umec_process(["policy", "history", "pi-k3s", "-o", "yaml"], cli)
    assert [e["outcome"] for e in yaml.safe_load(out)] == ["applied"]
    code, out, _ = umec_process(["policy", "history", "pi-k3s"], cli)
    no_box(out)
    assert out.split()[:6] == ["at", "outcome", "version", "signers", "digest", "check"]


@pytest.mark.parametrize("bad", ["xml", "JSON", ""])
def test_an_unknown_output_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    code, out, err = umec_process(["nodes", "-o", bad], clean_env(tmp_path))
    assert code == 2 and out == "" and err.startswith("error: usage: ") and len(
        err.splitlines()) == 1


def test_plain_table_pads_columns_and_keeps_whole_values() -> None:
    text = plain_table(("a", "bb"), [["x" * 30, "y"], ["z", "w" * 100]])
    assert text.splitlines() == ["a" + " " * 31 + "bb", "x" * 30 + "  y",
                                 "z" + " " * 31 + "w" * 100]
