"""The CI pipeline (deploy/ci/) and scripts/publish-images.sh (issue 12).

(a) The workflow files parse, every script they run exists and every ``umec`` command they or the
publisher run is a real command with real flags. (b) publish-images.sh end to end: a tiny
two-platform OCI layout is pushed to a real docker-registry, signed, attested and verified, and
then checked independently with ``umec verify`` / ``verify-attestation`` (a wrong key fails).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

import umec.cli
from admission.registry.manifests import canonical_json
from admission.registry.oci_build import OCI_CONFIG, OCI_LAYER, make_layer, platform_dict
from scripts.imagebuild.publish import Pushed, sign_and_attest, verify
from tests.support.registry import RunningRegistry, requires_registry

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "deploy" / "ci"
UMEC = str(Path(sys.executable).with_name("umec"))
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PLATFORMS = ("linux/amd64", "linux/arm64")


# -- (a) static: scripts and umec commands named by the pipeline exist ------------------------

def _run_lines() -> list[str]:
    gh = yaml.safe_load((CI / "github-actions.yml").read_text())
    lines = [line for job in gh["jobs"].values() for step in job["steps"]
             for line in str(step.get("run", "")).splitlines()]
    gl = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    lines += [line for job in gl.values() if isinstance(job, dict)
              for line in job.get("script", [])]
    lines += _shell_blocks((CI / "README.md").read_text())
    joined: list[str] = []  # a line ending in a backslash continues on the next
    for line in (raw.strip() for raw in lines):
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line
        else:
            joined.append(line)
    return [line for line in joined if line]


def _shell_blocks(markdown: str) -> list[str]:
    """The lines of the fenced blocks without a language (the README's shell commands); a
    fence with a language (```yaml) opens a block that is skipped to its closing fence."""
    lines: list[str] = []
    fence: str | None = None  # the open block's language, "" for a shell block
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "":
            lines.append(line)
    return lines


def check_umec_argv(argv: list[str]) -> None:
    """Fail unless ``argv`` (after ``umec``) names a real command and only its flags.

    Parsed by the command itself (typer vendors click as ``typer._click``): unknown options,
    missing values, bad choices and extra arguments are usage errors.
    """
    command: Any = typer.main.get_command(umec.cli.app)
    args = list(argv)
    while isinstance(command, TyperGroup):
        assert args, f"umec {' '.join(argv)}: no subcommand"
        sub = command.commands.get(args[0])
        assert sub is not None, f"umec {' '.join(argv)}: no command {args[0]!r}"
        command, args = sub, args[1:]
    try:
        command.make_context("umec", list(args))
    except UsageError as exc:
        raise AssertionError(f"umec {' '.join(argv)}: {exc}") from None


def _umec_calls(lines: list[str]) -> list[list[str]]:
    calls = []
    for line in lines:
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value umec …
            words = words[1:]
        if words and words[0].rsplit("/", 1)[-1] == "umec":
            cut = [i for i, w in enumerate(words) if w in (">", "|", "&&", ";")]
            calls.append(words[1:cut[0] if cut else None])
    return calls


def test_workflows_parse_and_name_real_scripts() -> None:
    lines = _run_lines()
    scripts = {w for line in lines for w in shlex.split(line)
               if w.startswith("scripts/") and w.endswith(".sh")}
    assert {"scripts/setup.sh", "scripts/build-images.sh", "scripts/check-images.sh",
            "scripts/publish-images.sh"} <= scripts
    for script in scripts:
        path = ROOT / script
        assert path.is_file() and os.access(path, os.X_OK), script
    gh = yaml.safe_load((CI / "github-actions.yml").read_text())
    assert gh["permissions"] == {"contents": "read", "packages": "write"}
    assert gh["jobs"]["images"]["container"] == "debian:bookworm"


def test_every_umec_command_in_the_pipeline_is_real() -> None:
    calls = _umec_calls(_run_lines())
    assert {c[0] for c in calls} >= {"verify", "verify-attestation", "keys"}
    pushed = Pushed("ghcr.io/acme/umec/umec-trust", "sha256:" + "a" * 64,
                    {"linux/amd64": "sha256:" + "b" * 64, "linux/arm64": "sha256:" + "c" * 64})
    calls += sign_and_attest(pushed, Path("out/oci/umec-trust"), Path("/tmp/w"), "github")
    calls += verify(pushed, "umec-ci.pub")
    for argv in calls:
        check_umec_argv(argv)


def test_the_checker_rejects_made_up_flags_and_commands() -> None:
    for bad in (["sign", "--recursve", "--key", "k", "img"], ["attestt", "img"],
                ["sbom", "dir", "--format", "swid"], ["verify", "--key", "k", "a", "b"]):
        with pytest.raises(AssertionError):
            check_umec_argv(bad)


# -- (b) publish-images.sh end to end ----------------------------------------------------------

DPKG = (b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\nArchitecture: {arch}\n\n"
        b"Package: tpm2-tools\nStatus: install ok installed\nVersion: 5.4-1\n"
        b"Architecture: {arch}\n")
METADATA = b"Metadata-Version: 2.1\nName: tinyapp\nVersion: 1.2.3\n"


def _put(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def _image(layout: Path, platform: str) -> dict[str, Any]:
    arch = platform_dict(platform)["architecture"].encode()
    layer, diff_id = make_layer({
        "var/lib/dpkg/status": DPKG.replace(b"{arch}", arch),
        "usr/lib/python3/dist-packages/tinyapp-1.2.3.dist-info/METADATA": METADATA,
        "etc/os-release": b'ID=debian\nVERSION_ID="12"\n'})
    config = canonical_json({**platform_dict(platform), "config": {"Cmd": ["/bin/true"]},
                             "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _put(layout, config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": _put(layout, layer), "size": len(layer)}]})
    return {"mediaType": OCI_MANIFEST, "digest": _put(layout, manifest), "size": len(manifest),
            "platform": platform_dict(platform)}


def write_layout(layout: Path, version: str) -> str:
    """A two-platform OCI image layout; index.json tags the image index ``version``."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": [_image(layout, p) for p in PLATFORMS]})
    digest = _put(layout, index)
    top = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": OCI_INDEX, "digest": digest, "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": version}}]}
    (layout / "index.json").write_bytes(canonical_json(top))
    return digest


def _keys(tmp: Path, prefix: str, env: dict[str, str]) -> tuple[Path, Path]:
    subprocess.run([UMEC, "keys", "generate", "--output-key-prefix", str(tmp / prefix)],
                   env=env, check=True, capture_output=True)
    return tmp / f"{prefix}.key", tmp / f"{prefix}.pub"


def _umec(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UMEC, *argv], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def published(tmp_path: Path,
              registry: RunningRegistry) -> tuple[dict[str, Any], Path, dict[str, str]]:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed (scripts/setup.sh)")
    env = {**os.environ, "COSIGN_PASSWORD": "ci-secret-password", "GITHUB_ACTIONS": "true",
           "GITHUB_REPOSITORY": "acme/umec", "GITHUB_SHA": "0" * 40,
           "GITHUB_REF": "refs/tags/v0.1.0",
           "GITHUB_WORKFLOW_REF": "acme/umec/.github/workflows/images.yml@refs/tags/v0.1.0",
           "GITHUB_RUN_ID": "42", "HOME": str(tmp_path)}
    key, pub = _keys(tmp_path, "umec-ci", env)
    env.update(COSIGN_KEY=key.read_text(), COSIGN_PUB=str(pub))
    index = write_layout(tmp_path / "out" / "oci" / "tinyapp", "0.1.0")
    prefix = f"{registry.host}/ci-{tmp_path.name[-12:].lower().strip('_')}"
    proc = subprocess.run([str(ROOT / "scripts" / "publish-images.sh"), str(tmp_path / "out"),
                           prefix, "--insecure"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "published.json").read_text())["tinyapp"]
    assert report["index"] == index
    return report, pub, env


@requires_registry
def test_publish_signs_and_attests_index_and_every_platform(
        published: tuple[dict[str, Any], Path, dict[str, str]], tmp_path: Path) -> None:
    report, pub, env = published
    repo = report["ref"].rsplit(":", 1)[0]
    assert sorted(report["platforms"]) == list(PLATFORMS)
    digests = [report["index"], *report["platforms"].values()]
    for digest in digests:
        ref = f"{repo}@{digest}"
        assert _umec(["verify", "--key", str(pub), ref], env).returncode == 0, ref
        got = _umec(["verify-attestation", "--key", str(pub), "--type", "spdxjson",
                     "--output", "json", ref], env)
        assert got.returncode == 0, (ref, got.stderr)
        assert "tinyapp" in got.stdout and "libc6" in got.stdout, got.stdout[:500]
    prov = _umec(["verify-attestation", "--key", str(pub), "--type", "slsaprovenance1",
                  f"{repo}@{report['index']}"], env)
    assert prov.returncode == 0, prov.stderr
    # another key verifies nothing
    _, wrong = _keys(tmp_path, "other", env)
    for digest in digests:
        ref = f"{repo}@{digest}"
        assert _umec(["verify", "--key", str(wrong), ref], env).returncode != 0
        for kind in ("spdxjson", "slsaprovenance1"):
            assert _umec(["verify-attestation", "--key", str(wrong), "--type", kind, ref],
                         env).returncode != 0


@requires_registry
def test_publish_fails_in_one_line_without_a_key(tmp_path: Path,
                                                 registry: RunningRegistry) -> None:
    write_layout(tmp_path / "out" / "oci" / "tinyapp", "0.1.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSIGN_")}
    proc = subprocess.run([str(ROOT / "scripts" / "publish-images.sh"), str(tmp_path / "out"),
                           f"{registry.host}/nokey", "--insecure"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "COSIGN_KEY" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "published.json").exists()
