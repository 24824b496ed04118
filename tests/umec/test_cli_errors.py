"""Every ``umec`` failure is one line on stderr with what to do, and a documented exit code.

The commands run for real: typer's CliRunner drives the same click group the console script
does (``UmecGroup``: one central mapping), and a few cases run ``python -m umec`` as a process.
``umec verify`` runs against a real docker-registry with real cosign signatures.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.signing.sign import sign_image
from keys import generate_private_key, public_key_pem, save_private_key
from tests.support.cli import (
    WHAT_TO_DO,
    assert_error,
    clean_env,
    one_error_line,
    umec,
    umec_process,
)
from tests.support.oci_images import push_image
from tests.support.pcr_policy import k3s_policy
from tests.support.registry import RunningRegistry, requires_registry
from umec.cli_errors import EXIT_FAILED, EXIT_USAGE, as_cli_error
from umec.localserver import free_port


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    """No UMEC_* from the caller's environment; state in tmp_path."""
    return clean_env(tmp_path)


# --- umec verify: threshold and duplicate keys -------------------------------------------------

@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """ci.pub and other.pub; ci-copy.pub is ci's key again under another name (CRLF PEM)."""
    ci, other = generate_private_key(), generate_private_key()
    save_private_key(tmp_path / "ci.key", ci)
    (tmp_path / "ci.pub").write_bytes(public_key_pem(ci))
    (tmp_path / "ci-copy.pub").write_bytes(public_key_pem(ci).replace(b"\n", b"\r\n"))
    (tmp_path / "other.pub").write_bytes(public_key_pem(other))
    (tmp_path / "garbage.pub").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n")
    return {p.name: p for p in tmp_path.iterdir() if p.suffix in {".pub", ".key"}}


@pytest.fixture
def images(registry: RunningRegistry, keys: dict[str, Path]) -> dict[str, str]:
    """A pushed image signed by ci, and one signed by nobody."""
    base = f"{registry.host}/cli-errors-{uuid.uuid4().hex[:8]}"

    async def go() -> dict[str, str]:
        from keys import load_private_key
        async with RegistryClient() as client:
            for name in ("signed", "unsigned"):
                await push_image(client, f"{base}/{name}:1.0", salt=name + base)
            await sign_image(client, parse_reference(f"{base}/signed:1.0"),
                             load_private_key(keys["ci.key"]))
        return {"signed": f"{base}/signed:1.0", "unsigned": f"{base}/unsigned:1.0"}
    return asyncio.run(go())


def verify(image: str, *args: str) -> list[str]:
    return ["verify", image, *args]


@requires_registry
def test_threshold_zero_is_a_usage_error_not_a_pass(images: dict[str, str], keys: dict[str, Path],
                                                    env: dict[str, str | None]) -> None:
    # Before: `--threshold 0` verified an image nobody signed (0 of 0 keys: exit 0).
    result = umec(verify(images["unsigned"], "--key", str(keys["ci.pub"]), "--threshold", "0"),
                  env)
    assert_error(result, EXIT_USAGE, "usage: --threshold 0", "--threshold 1 or more")
    negative = umec(verify(images["unsigned"], "--key", str(keys["ci.pub"]),
                           "--threshold", "-1"), env)
    assert_error(negative, EXIT_USAGE, "--threshold -1")


@requires_registry
def test_threshold_above_the_distinct_keys_is_a_usage_error(
        images: dict[str, str], keys: dict[str, Path], env: dict[str, str | None]) -> None:
    result = umec(verify(images["signed"], "--key", str(keys["ci.pub"]),
                         "--key", str(keys["other.pub"]), "--threshold", "3"), env)
    assert_error(result, EXIT_USAGE, "--threshold 3 but only 2 distinct key(s)",
                 "--threshold 2 or less")


@requires_registry
def test_a_key_given_twice_is_reported_and_counted_once(
        images: dict[str, str], keys: dict[str, Path], env: dict[str, str | None]) -> None:
    # Before: the same key under two file names counted as two signers: threshold 2 passed.
    twice = ["--key", str(keys["ci.pub"]), "--key", str(keys["ci-copy.pub"])]
    code, stdout, stderr = umec(verify(images["signed"], *twice, "--threshold", "2"), env)
    assert code == EXIT_USAGE, stdout + stderr
    warning, error = stderr.splitlines()
    assert warning.startswith("warning: key.duplicate: ")
    assert str(keys["ci-copy.pub"]) in warning and str(keys["ci.pub"]) in warning
    assert "only 1 distinct key(s)" in error and WHAT_TO_DO in error and "Traceback" not in stdout

    code, stdout, stderr = umec(verify(images["signed"], *twice), env)
    assert code == 0 and "verified: 1 key(s)" in stdout, stdout + stderr
    assert stderr.splitlines() == [stderr.splitlines()[0]] and "key.duplicate" in stderr


@requires_registry
def test_verify_passes_and_fails_on_the_signatures(
        images: dict[str, str], keys: dict[str, Path], env: dict[str, str | None]) -> None:
    code, stdout, stderr = umec(verify(images["signed"], "--key", str(keys["ci.pub"])), env)
    assert code == 0 and stderr == "" and "verified: 1 key(s)" in stdout
    both = ["--key", str(keys["ci.pub"]), "--key", str(keys["other.pub"]), "--threshold", "2"]
    line = assert_error(umec(verify(images["signed"], *both), env), EXIT_FAILED,
                        "signature.threshold", "1 of 2 required keys")
    assert "umec sign" in line
    assert_error(umec(verify(images["unsigned"], "--key", str(keys["ci.pub"])), env),
                 EXIT_FAILED, "0 of 1 required keys")


# --- key files ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "needle", "check"), [
    ("missing.pub", "No such file or directory", "error: file: "),
    ("garbage.pub", "garbage.pub", "error: key.invalid: "),
    (".", "Is a directory", "error: file: "),
])
def test_verify_key_file_problems(tmp_path: Path, keys: dict[str, Path],
                                  env: dict[str, str | None], name: str, needle: str,
                                  check: str) -> None:
    # The key is read before any registry is asked: 127.0.0.1:1 is never contacted.
    result = umec(verify("127.0.0.1:1/app:1", "--key", str(tmp_path / name)), env)
    line = assert_error(result, EXIT_USAGE, needle)
    assert line.startswith(check)


def test_malformed_image_reference(keys: dict[str, Path], env: dict[str, str | None]) -> None:
    for verb in (["verify", "a@@b", "--key", str(keys["ci.pub"])],
                 ["sign", "a@@b", "--key", str(keys["ci.key"])]):
        assert_error(umec(verb, env), EXIT_USAGE, "reference.invalid", "more than one '@'")


def test_sign_key_problems(tmp_path: Path, keys: dict[str, Path],
                           env: dict[str, str | None]) -> None:
    image = "127.0.0.1:1/app:1"
    assert_error(umec(["sign", image, "--key", str(tmp_path / "missing.key")], env), EXIT_USAGE,
                 "key.invalid", "No such file or directory")
    assert_error(umec(["sign", image, "--key", str(keys["garbage.pub"])], env), EXIT_USAGE,
                 "key.invalid")
    assert_error(umec(["sign", image, "--key", "env://UMEC_TEST_NO_SUCH_KEY"], env), EXIT_USAGE,
                 "UMEC_TEST_NO_SUCH_KEY is empty or unset")


def test_unreachable_registry(keys: dict[str, Path], env: dict[str, str | None]) -> None:
    image = f"127.0.0.1:{free_port()}/app:1"
    assert_error(umec(verify(image, "--key", str(keys["ci.pub"])), env), EXIT_FAILED,
                 "registry.unavailable", "check that it is up")
    assert_error(umec(["sign", image, "--key", str(keys["ci.key"])], env), EXIT_FAILED,
                 "registry.unavailable")


# --- settings, database, files of the server-side commands ------------------------------------

def test_bad_settings(tmp_path: Path, env: dict[str, str | None]) -> None:
    assert_error(umec(["nodes"], {**env, "UMEC_LISTEN_PORT": "abc"}), EXIT_USAGE,
                 "settings.invalid: UMEC_LISTEN_PORT", "fix that UMEC_* environment variable")
    assert_error(umec(["policy", "list"], {**env, "UMEC_CONFIG": str(tmp_path / "nope.yaml")}),
                 EXIT_USAGE, "settings.invalid", "nope.yaml")
    assert_error(umec(["demo"], {**env, "UMEC_LOG_LEVEL": "LOUD"}), EXIT_USAGE,
                 "UMEC_LOG_LEVEL: unknown level 'LOUD'", "DEBUG, INFO, WARNING or ERROR")
    assert_error(umec(["agent", "--once"], env), EXIT_USAGE, "UMEC_NODE_NAME is required")
    assert_error(umec(["agent", "--once"], {**env, "UMEC_NODE_NAME": "n",
                                            "UMEC_MEASURE_FILES": '["/no/k3s"]'}),
                 EXIT_USAGE, "UMEC_MEASURE_FILES entry /no/k3s: No such file")
    assert_error(umec(["api", "sensor"], env), EXIT_USAGE, "UMEC_TOKEN_SERVICE_URL is not set")
    assert_error(umec(["api", "radar"], env), EXIT_USAGE, "unknown API radar", "sensor")


def test_database_unreachable_or_misnamed(env: dict[str, str | None]) -> None:
    down = {**env, "UMEC_DATABASE_URL": f"postgresql://umec@127.0.0.1:{free_port()}/umec"}
    for verb in (["nodes"], ["policy", "list"], ["nodes", "remove", "node-a"]):
        assert_error(umec(verb, down), EXIT_FAILED, "database.unreachable", "UMEC_DATABASE_URL")
    assert_error(umec(["nodes"], {**env, "UMEC_DATABASE_URL": "nosuchdb://x"}), EXIT_USAGE,
                 "settings.invalid: UMEC_DATABASE_URL")


def test_server_files_are_checked_before_start(tmp_path: Path,
                                               env: dict[str, str | None]) -> None:
    assert_error(umec(["server"], {**env, "UMEC_EK_CA_BUNDLE": str(tmp_path / "ca.pem")}),
                 EXIT_USAGE, "UMEC_EK_CA_BUNDLE", "No such file")
    assert_error(umec(["server"], {**env, "UMEC_TLS_CERT": str(tmp_path / "c.pem"),
                                   "UMEC_TLS_KEY": str(tmp_path / "k.pem")}),
                 EXIT_USAGE, "TLS file", "c.pem")
    assert_error(umec(["server"], {**env, "UMEC_POLICY_DIR": str(tmp_path / "policies")}),
                 EXIT_USAGE, "UMEC_POLICY_DIR", "not a directory")


def test_webhook_settings_and_files(tmp_path: Path, env: dict[str, str | None]) -> None:
    assert_error(umec(["webhook"], env), EXIT_USAGE, "UMEC_WEBHOOK_TLS_CERT", "umec webhook certs")
    files = {"UMEC_WEBHOOK_TLS_CERT": str(tmp_path / "tls.crt"),
             "UMEC_WEBHOOK_TLS_KEY": str(tmp_path / "tls.key")}
    assert_error(umec(["webhook"], {**env, **files}), EXIT_USAGE, "webhook TLS file", "tls.crt")
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("")  # readable; the webhook process would parse them
    policies = tmp_path / "image-policies"
    policies.mkdir()
    (policies / "ci.yaml").write_text("apiVersion: umec.io/v1alpha1\nkind: ClusterImagePolicy\n"
                                      "metadata: {name: ci}\nspec: {images: []}\n")
    # A process: were the check gone, `umec webhook` would exec the webhook in its place.
    assert_error(umec_process(["webhook"], {**env, **files,
                                            "UMEC_ADMISSION_POLICY_DIR": str(policies)}),
                 EXIT_USAGE, "UMEC_ADMISSION_POLICY_DIR", "spec.images", "Fix the")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_error(umec(["webhook", "certs", "--dir", str(blocker / "certs")], env), EXIT_USAGE,
                 "error: file: ", "a-file")


def test_policy_and_node_commands(tmp_path: Path, env: dict[str, str | None]) -> None:
    assert_error(umec(["policy", "set", str(tmp_path / "none.yaml")], env), EXIT_USAGE,
                 "usage: ", "does not exist", "umec policy set --help")
    binary = tmp_path / "policy.bin"
    binary.write_bytes(b"\xff\xfe\x00name")
    assert_error(umec(["policy", "set", str(binary)], env), EXIT_USAGE, "not UTF-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nselection: {sha256: [0]}\npcrs: {sha256: {0: [nothex]}}\n")
    assert_error(umec(["policy", "set", str(bad)], env), EXIT_FAILED, "policy.rejected",
                 "pcrs.sha256.0")
    assert_error(umec(["policy", "show", "pi-k3s"], env), EXIT_FAILED, "not_found",
                 "umec policy list")
    assert_error(umec(["policy", "remove", "pi-k3s"], env), EXIT_FAILED, "not_found")
    good = tmp_path / "pi.yaml"
    good.write_text(k3s_policy("ab" * 32))
    assert umec(["policy", "set", str(good)], env)[0] == 0
    assert_error(umec(["nodes", "remove", "node-z"], env), EXIT_FAILED, "node-z")
    assert_error(umec(["nodes", "ack", "node-z"], env), EXIT_FAILED, "node-z")
    assert_error(umec(["tokens", "rotate-key", "--overlap-seconds", "1"], env), EXIT_USAGE,
                 "shorter than the token lifetime", "--overlap-seconds")


def test_click_usage_errors_are_one_line_too(env: dict[str, str | None]) -> None:
    assert_error(umec(["verify"], env), EXIT_USAGE, "Missing argument", "umec verify --help")
    # --key or the keyless flags (tests/umec/test_cli_verify_keyless.py): neither is ours.
    assert_error(umec(["verify", "img"], env), EXIT_USAGE, "pass --key or the keyless flags")
    assert_error(umec(["verify", "img", "--key", "k", "--threshold", "two"], env), EXIT_USAGE,
                 "'--threshold'")
    assert_error(umec(["no-such-verb"], env), EXIT_USAGE, "no-such-verb")


def test_an_unanticipated_exception_is_one_line_naming_a_bug() -> None:
    error = as_cli_error(RuntimeError("boom\nsecond line"))
    assert error.exit_code == EXIT_FAILED
    assert error.line() == ("error: internal: RuntimeError: boom second line — what to do: "
                            "this is a bug in umec: report it with the command and this line")


# --- the real entry point -----------------------------------------------------------------------

def test_console_entry_point_missing_key_file(tmp_path: Path) -> None:
    """The report's first case: a missing key file printed a bare FileNotFoundError."""
    code, stdout, stderr = umec_process(["verify", "127.0.0.1:1/app:1",
                                         "--key", str(tmp_path / "cosign.pub")],
                                        {"UMEC_DATA_DIR": str(tmp_path)})
    assert code == EXIT_USAGE and stdout == ""
    line = one_error_line(stderr, stdout)
    assert "cosign.pub: No such file or directory" in line and "FileNotFoundError" not in line


def test_demo_without_its_parts_says_how_to_get_them(tmp_path: Path) -> None:
    result = umec_process(["demo"], {"UMEC_DATA_DIR": str(tmp_path), "PATH": str(tmp_path)})
    assert_error(result, EXIT_FAILED, "demo.requirements", "scripts/setup.sh")
