"""`umec keys generate`, `umec sign --recursive`, `umec attest`, `umec verify-attestation`,
`umec sbom` and `umec provenance` as a CI job runs them: cosign's key format (checked against a
key cosign wrote), a two-platform index in a real docker-registry, attestations made from the
generated SBOM and provenance and verified back, and one stderr line for every refusal."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import uuid
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from admission.core.keys_cosign import decrypt_cosign_key, load_signing_key
from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.signing.keypair import COSIGN_SCRYPT_LEVELS
from admission.signing.sbom import read_inventory
from admission.signing.verify import verify_image_signatures
from keys import load_public_key, public_key_pem
from tests.admission.test_cosign import REAL_COSIGN_KEY
from tests.support.cli import assert_error, clean_env, umec
from tests.support.oci_images import push_index
from tests.support.registry import RunningRegistry, requires_registry
from umec.cli import app

PASSWORD = "correct horse"


def env(tmp_path: Path, **extra: str | None) -> dict[str, str | None]:
    out = clean_env(tmp_path)
    out.update({"COSIGN_PASSWORD": PASSWORD, "SOURCE_DATE_EPOCH": None})
    out.update(extra)
    return out


def generate(tmp_path: Path, prefix: str = "ci", **extra: str | None) -> tuple[Path, Path]:
    code, out, err = umec(["keys", "generate", "--output-key-prefix", str(tmp_path / prefix)],
                          env(tmp_path, **extra))
    assert code == 0, (out, err)
    return tmp_path / f"{prefix}.key", tmp_path / f"{prefix}.pub"


def pem_json(pem: bytes) -> tuple[str, bytes, dict[str, Any]]:
    lines = pem.decode().splitlines()
    body = base64.b64decode("".join(lines[1:-1]), validate=True)
    return lines[0], body, json.loads(body)


def shape(doc: Any) -> Any:
    """Keys in order, and the JSON type of every leaf."""
    if isinstance(doc, dict):
        return [(k, shape(v)) for k, v in doc.items()]
    return type(doc).__name__


# --- keys generate --------------------------------------------------------------------------

def test_keys_generate_writes_cosigns_format(tmp_path: Path) -> None:
    private, public = generate(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pem = private.read_bytes()
    key = load_signing_key(pem, PASSWORD.encode())       # our reader, as `umec sign` reads it
    assert public_key_pem(key) == public.read_bytes()
    assert public_key_pem(load_public_key(public.read_bytes())) == public_key_pem(key)

    # What cosign's reader parses, compared with a key `cosign generate-key-pair` wrote:
    ours_head, ours_body, ours = pem_json(pem)
    real_head, real_body, real = pem_json(REAL_COSIGN_KEY)
    assert ours_head == real_head == "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"
    assert all(len(line) <= 64 for line in pem.decode().splitlines())       # Go pem.Encode
    assert [len(x) for x in pem.decode().splitlines()[1:-2]] == \
        [64] * (len(pem.decode().splitlines()) - 3)
    assert shape(ours) == shape(real)                     # field order and types, all levels
    # Go's encoding/json of the struct: compact, and []byte as padded standard base64.
    for doc, body in ((ours, ours_body), (real, real_body)):
        assert json.dumps(doc, separators=(",", ":")).encode() == body
        for field in (doc["kdf"]["salt"], doc["cipher"]["nonce"], doc["ciphertext"]):
            assert re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", field) and len(field) % 4 == 0
        assert len(base64.b64decode(doc["kdf"]["salt"])) == 32
        assert len(base64.b64decode(doc["cipher"]["nonce"])) == 24
    # A P-256 PKCS#8 key with its public point is 138 bytes under Go too (+16 MAC).
    assert len(base64.b64decode(ours["ciphertext"])) == \
        len(base64.b64decode(real["ciphertext"])) == 138 + 16
    # Parameters go-securesystemslib's Decrypt accepts (encrypted.go CheckParams: Legacy 2^15,
    # Standard 2^16, OWASP 2^17, r=8, p=1; every other set is "unsupported scrypt parameters").
    accepted = {(32768, 8, 1), (65536, 8, 1), (131072, 8, 1)}
    assert set(COSIGN_SCRYPT_LEVELS.values()) == accepted
    params = ours["kdf"]["params"]
    assert (params["N"], params["r"], params["p"]) == (32768, 8, 1)  # what every cosign reads
    real_params = real["kdf"]["params"]
    assert (real_params["N"], real_params["r"], real_params["p"]) in accepted
    # And the real cosign key decrypts with our reader (empty password, as written).
    assert decrypt_cosign_key(REAL_COSIGN_KEY, b"")


def test_keys_generate_refuses_to_overwrite_and_takes_a_piped_password(tmp_path: Path) -> None:
    private, _ = generate(tmp_path)
    before = private.read_bytes()
    line = assert_error(umec(["keys", "generate", "--output-key-prefix", str(tmp_path / "ci")],
                             env(tmp_path)), 1, "key.exists", "--force")
    assert str(private) in line and private.read_bytes() == before
    code, _, err = umec(["keys", "generate", "--output-key-prefix", str(tmp_path / "ci"),
                         "--force"], env(tmp_path))
    assert code == 0 and private.read_bytes() != before, err

    # No COSIGN_PASSWORD and stdin not a terminal: the piped bytes are the password, as is.
    result = CliRunner().invoke(app, ["keys", "generate", "--output-key-prefix",
                                      str(tmp_path / "piped")],
                                env=env(tmp_path, COSIGN_PASSWORD=None), input="from-ci\n",
                                prog_name="umec")
    assert result.exit_code == 0, result.output
    assert "Private key written to" in result.stderr
    load_signing_key((tmp_path / "piped.key").read_bytes(), b"from-ci\n")
    assert_error(umec(["keys", "generate", "--output-key-prefix",
                       str(tmp_path / "no" / "such" / "dir")], env(tmp_path)), 2, "file")


# --- sign --recursive, attest, verify-attestation (real registry) ----------------------------

def push_two_platforms(registry: RunningRegistry, name: str) -> tuple[str, dict[str, str]]:
    async def go() -> tuple[str, dict[str, str]]:
        async with RegistryClient() as client:
            return await push_index(client, f"{name}:1.0",
                                    platforms=("linux/amd64", "linux/arm64"))
    return asyncio.run(go())


def signers_of(name: str, digest: str, public: Path) -> list[str]:
    async def go() -> list[str]:
        async with RegistryClient() as client:
            ok, _ = await verify_image_signatures(
                client, parse_reference(f"{name}@{digest}"),
                {"ci": load_public_key(public.read_bytes())})
            return sorted({s.kind for s in ok})
    return asyncio.run(go())


@requires_registry
def test_sign_recursive_signs_the_index_and_each_platform(registry: RunningRegistry,
                                                          tmp_path: Path) -> None:
    private, public = generate(tmp_path)
    name = f"{registry.host}/rec-{uuid.uuid4().hex[:8]}/app"
    index, children = push_two_platforms(registry, name)
    code, out, err = umec(["sign", f"{name}:1.0", "--key", str(private), "--recursive"],
                          env(tmp_path))
    assert code == 0, (out, err)
    assert {line.split()[-1] for line in out.splitlines() if line.startswith("signed")} == \
        {index, *children.values()}
    for digest in (index, *children.values()):
        assert signers_of(name, digest, public) == ["legacy"]
        code, out, _ = umec(["verify", f"{name}@{digest}", "--key", str(public)], env(tmp_path))
        assert code == 0 and "verified" in out

    # Without --recursive the arm64 manifest a Pi pulls stays unsigned.
    other = f"{registry.host}/rec-{uuid.uuid4().hex[:8]}/app"
    index2, children2 = push_two_platforms(registry, other)
    assert umec(["sign", f"{other}:1.0", "--key", str(private)], env(tmp_path))[0] == 0
    assert signers_of(other, index2, public) == ["legacy"]
    assert signers_of(other, children2["linux/arm64"], public) == []
    # A wrong password is one line, exit 2.
    assert_error(umec(["sign", f"{other}:1.0", "--key", str(private)],
                      env(tmp_path, COSIGN_PASSWORD="wrong")), 2, "wrong COSIGN_PASSWORD")


def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "var/lib/dpkg/status").write_text(
        "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u4\n"
        "Architecture: arm64\nSource: glibc\nDescription: GNU C Library\n long text\n\n"
        "Package: removed\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
        "Package: tpm2-tools\nStatus: install ok installed\nVersion: 5.4-1\n"
        "Architecture: arm64\n")
    meta = root / "usr/local/lib/python3.11/site-packages/PyYAML-6.0.1.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0.1\n\n"
                                   "Name: not-a-header\n")
    return root


@requires_registry
def test_attest_and_verify_attestation_from_a_ci_job(registry: RunningRegistry,
                                                     tmp_path: Path) -> None:
    private, public = generate(tmp_path)
    name = f"{registry.host}/att-{uuid.uuid4().hex[:8]}/app"
    index, _ = push_two_platforms(registry, name)
    ci = env(tmp_path, GITHUB_SERVER_URL="https://github.com", GITHUB_REPOSITORY="acme/umec",
             GITHUB_WORKFLOW_REF="acme/umec/.github/workflows/image.yml@refs/heads/main",
             GITHUB_SHA="c0ffee" * 6 + "abcd", GITHUB_REF="refs/heads/main",
             GITHUB_RUN_ID="42", SOURCE_DATE_EPOCH="1700000000")
    prov, sbom = tmp_path / "provenance.json", tmp_path / "sbom.spdx.json"
    assert umec(["provenance", "--from-env", "github", "--output-file", str(prov)], ci)[0] == 0
    code, _, err = umec(["sbom", str(rootfs(tmp_path)), "--output-file", str(sbom)], ci)
    assert code == 0 and "3 packages (2 deb, 1 pypi, debian-12)" in err
    for kind, path in (("slsaprovenance1", prov), ("spdxjson", sbom)):
        code, out, err = umec(["attest", f"{name}:1.0", "--key", str(private), "--type", kind,
                               "--predicate", str(path)], ci)
        assert code == 0 and f"attested {index}" in out, (out, err)

    code, out, err = umec(["verify-attestation", f"{name}:1.0", "--key", str(public),
                           "--type", "slsaprovenance1", "--output", "json"], ci)
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["image"] == f"{name}:1.0@{index}"
    facts = doc["attestations"][0]["facts"]
    assert facts["builder_id"] == \
        "https://github.com/acme/umec/.github/workflows/image.yml@refs/heads/main"
    assert facts["source_repositories"] == ["https://github.com/acme/umec"]
    assert doc["attestations"][0]["subject"][0]["digest"] == {"sha256": index[7:]}
    code, out, _ = umec(["verify-attestation", f"{name}@{index}", "--key", str(public),
                         "--type", "spdxjson"], ci)
    assert code == 0 and "https://spdx.dev/Document" in out
    assert "spdx SPDX-2.3 with 4 packages" in out, out      # the image and its 3 packages

    _, other_pub = generate(tmp_path, "other")
    assert_error(umec(["verify-attestation", f"{name}:1.0", "--key", str(other_pub),
                       "--type", "slsaprovenance1"], ci), 1, "attestation.signature")
    assert_error(umec(["verify-attestation", f"{name}:1.0", "--key", str(public),
                       "--type", "cyclonedx"], ci), 1, "attestation.predicate")
    assert_error(umec(["verify-attestation", f"{name}:1.0", "--key", str(public),
                       "--type", "not a type"], ci), 2, "--type")
    bad = tmp_path / "bad.json"
    bad.write_text('{"buildDefinition": {}}')
    assert_error(umec(["attest", f"{name}:1.0", "--key", str(private), "--type",
                       "slsaprovenance1", "--predicate", str(bad)], ci), 2, "runDetails")
    # --no-upload prints the signed envelope and attaches nothing new.
    code, out, _ = umec(["attest", f"{name}:1.0", "--key", str(private), "--type", "custom",
                         "--predicate", str(bad), "--no-upload"], ci)
    envelope = json.loads(out)
    assert code == 0 and envelope["payloadType"] == "application/vnd.in-toto+json"
    assert json.loads(base64.b64decode(envelope["payload"]))["predicate"]["Data"] == \
        bad.read_text()


# --- sbom / provenance --------------------------------------------------------------------

def test_sbom_formats_and_reproducibility(tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    pinned = env(tmp_path, SOURCE_DATE_EPOCH="1700000000")
    code, spdx_out, _ = umec(["sbom", str(root), "--name", "umec-agent"], pinned)
    assert code == 0
    spdx = json.loads(spdx_out)
    assert spdx["spdxVersion"] == "SPDX-2.3" and spdx["creationInfo"]["created"] == \
        "2023-11-14T22:13:20Z"
    purls = sorted(ref["referenceLocator"] for p in spdx["packages"]
                   for ref in p.get("externalRefs", []))
    assert purls == [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=arm64&upstream=glibc&distro=debian-12",
        "pkg:deb/debian/tpm2-tools@5.4-1?arch=arm64&distro=debian-12",
        "pkg:pypi/pyyaml@6.0.1"]
    assert all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", p["SPDXID"]) for p in spdx["packages"])
    assert {r["relationshipType"] for r in spdx["relationships"]} == {"DESCRIBES", "CONTAINS"}
    assert umec(["sbom", str(root), "--name", "umec-agent"], pinned)[1] == spdx_out
    code, cdx_out, _ = umec(["sbom", str(root), "--format", "cyclonedx"], pinned)
    cdx = json.loads(cdx_out)
    assert cdx["bomFormat"] == "CycloneDX" and cdx["specVersion"] == "1.5"
    assert [c["name"] for c in cdx["components"]] == ["libc6", "tpm2-tools", "PyYAML"]
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", cdx["serialNumber"])
    assert_error(umec(["sbom", str(tmp_path / "missing")], pinned), 2, "sbom.source")
    assert_error(umec(["sbom", str(root)], env(tmp_path, SOURCE_DATE_EPOCH="soon")), 2,
                 "SOURCE_DATE_EPOCH")


def _tar_gz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def test_sbom_reads_an_oci_layout_with_whiteouts(tmp_path: Path) -> None:
    """Layers applied in order: a later layer's whiteout removes a wheel the first installed,
    an opaque directory hides the old dpkg status."""
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    meta = "usr/lib/python3/dist-packages/{0}.dist-info/METADATA"
    first = _tar_gz({"var/lib/dpkg/status": b"Package: old\nStatus: install ok installed\n"
                                            b"Version: 1\n",
                     meta.format("six-1.16.0"): b"Name: six\nVersion: 1.16.0\n",
                     meta.format("onnxruntime-1.17.0"): b"Name: onnxruntime\nVersion: 1.17\n"})
    second = _tar_gz({"usr/lib/python3/dist-packages/.wh.onnxruntime-1.17.0.dist-info": b"",
                      "var/lib/dpkg/.wh..wh..opq": b"",
                      "var/lib/dpkg/status": b"Package: new\nStatus: install ok installed\n"
                                             b"Version: 2\nArchitecture: arm64\n"})
    config = _blob(layout, b'{"architecture":"arm64","os":"linux"}')
    layers = [dict(_blob(layout, layer), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
              for layer in (first, second)]
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": dict(config, mediaType="application/vnd.oci.image.config."
                                                            "v1+json"),
                           "layers": layers}).encode()
    entry = dict(_blob(layout, manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                 platform={"os": "linux", "architecture": "arm64"})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    inv = read_inventory(layout)
    assert [(p.ecosystem, p.name, p.version) for p in inv.packages] == [
        ("deb", "new", "2"), ("pypi", "six", "1.16.0")]
    assert read_inventory(layout, "linux/arm64") == inv
    code, _, err = umec(["sbom", str(layout), "--platform", "linux/amd64"], env(tmp_path))
    assert code == 2 and "0 manifests match platform linux/amd64" in err


def test_provenance_from_flags_and_ci_environments(tmp_path: Path) -> None:
    code, out, _ = umec(["provenance", "--builder-id", "https://ci.example/b", "--source-repo",
                         "https://git.example/acme/app", "--commit", "abc123", "--ref",
                         "refs/tags/v1"], env(tmp_path, SOURCE_DATE_EPOCH="0"))
    assert code == 0
    doc = json.loads(out)
    assert doc["runDetails"]["builder"]["id"] == "https://ci.example/b"
    assert doc["buildDefinition"]["resolvedDependencies"] == [
        {"uri": "git+https://git.example/acme/app@refs/tags/v1",
         "digest": {"gitCommit": "abc123"}}]
    assert doc["runDetails"]["metadata"]["finishedOn"] == "1970-01-01T00:00:00Z"
    gitlab = env(tmp_path, CI_SERVER_URL="https://gitlab.example", CI_PROJECT_PATH="acme/app",
                 CI_PROJECT_URL="https://gitlab.example/acme/app", CI_COMMIT_SHA="f00d",
                 CI_COMMIT_REF_NAME="main", CI_JOB_URL="https://gitlab.example/acme/app/-/jobs/7")
    code, out, _ = umec(["provenance", "--from-env", "gitlab"], gitlab)
    doc = json.loads(out)
    assert doc["runDetails"]["builder"]["id"] == \
        "https://gitlab.example/acme/app/-/blob/main/.gitlab-ci.yml"
    assert doc["buildDefinition"]["externalParameters"]["source"] == {
        "repository": "https://gitlab.example/acme/app", "ref": "refs/heads/main"}
    no_github = env(tmp_path, **{k: None for k in os.environ if k.startswith("GITHUB_")})
    line = assert_error(umec(["provenance", "--from-env", "github"], no_github), 2,
                        "provenance.incomplete")
    assert "--builder-id" in line and "--commit" in line
