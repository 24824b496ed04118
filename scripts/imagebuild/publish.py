"""Publish built images: push, sign, attest (SBOM + SLSA provenance), verify (issue 12).

For each OCI layout under ``OUT/oci``: ``skopeo copy --all --preserve-digests`` to
``PREFIX/<name>:<version>``, check the pushed index digest is the layout's, then with ``umec``:
``sign --recursive`` the index, per platform an SPDX SBOM of that platform's layers attested on the
platform manifest *and* on the index (admission resolves a tag to the index digest, so an
ImagePolicy that requires ``sbom`` looks there), SLSA v1 provenance of this CI run attested on
the index, and finally ``verify`` / ``verify-attestation`` of every digest with ``COSIGN_PUB``.
The signing key is ``COSIGN_KEY`` (the PEM text, read as ``env://COSIGN_KEY``) with
``COSIGN_PASSWORD``. Registry credentials: ``REGISTRY_AUTH_FILE`` (containers auth.json, the same
``auths`` format as docker's config.json) for skopeo and, as ``UMEC_DOCKER_CONFIG``, for umec.
The first failing step stops everything with one line on stderr (exit 1); OUT/published.json
records what was pushed, signed and verified.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.imagebuild.errors import ImageBuildError

UMEC = str(Path(sys.executable).with_name("umec"))
KEY = "env://COSIGN_KEY"


class StepFailed(ImageBuildError):
    """A publish step failed; nothing after it ran (no unsigned or unverified image is reported)."""

    check = "image.publish"
    hint = ("Fix what the line names (registry login, COSIGN_KEY/COSIGN_PASSWORD/COSIGN_PUB) "
            "and rerun scripts/publish-images.sh; pushing the same digests again is harmless.")


@dataclass(frozen=True)
class Pushed:
    repo: str  # PREFIX/name, no tag
    index: str  # sha256:… of the pushed image index
    platforms: dict[str, str]  # "linux/arm64" -> manifest digest


def _platform(descriptor: Mapping[str, Any]) -> str:
    p = descriptor.get("platform") or {}
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def sign_and_attest(pushed: Pushed, layout: Path, work: Path, from_env: str) -> list[list[str]]:
    """The ``umec`` commands (argv after ``umec``) that sign and attest one pushed index."""
    index_ref = f"{pushed.repo}@{pushed.index}"
    name = pushed.repo.rsplit("/", 1)[-1]
    steps = [["sign", "--recursive", "--key", KEY, index_ref]]
    for platform, digest in sorted(pushed.platforms.items()):
        sbom = work / f"{name}-{platform.replace('/', '-')}.spdx.json"
        steps.append(["sbom", str(layout), "--platform", platform, "--format", "spdx",
                      "--name", f"{pushed.repo}@{digest}", "--output-file", str(sbom)])
        for subject in (f"{pushed.repo}@{digest}", index_ref):
            steps.append(["attest", "--key", KEY, "--type", "spdxjson", "--predicate", str(sbom),
                          subject])
    provenance = work / f"{name}.provenance.json"
    steps.append(["provenance", "--from-env", from_env, "--output-file", str(provenance)])
    steps.append(["attest", "--key", KEY, "--type", "slsaprovenance1", "--predicate",
                  str(provenance), index_ref])
    return steps


def verify(pushed: Pushed, public_key: str) -> list[list[str]]:
    """The ``umec`` commands that check every digest is signed and carries its attestations."""
    index_ref = f"{pushed.repo}@{pushed.index}"
    steps = [["verify", "--key", public_key, index_ref],
             ["verify-attestation", "--key", public_key, "--type", "slsaprovenance1", index_ref],
             ["verify-attestation", "--key", public_key, "--type", "spdxjson", index_ref]]
    for digest in sorted(pushed.platforms.values()):
        ref = f"{pushed.repo}@{digest}"
        steps += [["verify", "--key", public_key, ref],
                  ["verify-attestation", "--key", public_key, "--type", "spdxjson", ref]]
    return steps


def _run(argv: Sequence[str], env: Mapping[str, str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              env=dict(env), timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepFailed(f"{' '.join(argv[:3])}: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise StepFailed(f"`{' '.join(argv[:2])} … {argv[-1]}` exited {proc.returncode}: "
                         f"{last[:400]}")
    return proc.stdout


def _layout_index(layout: Path, version: str) -> str:
    for entry in json.loads((layout / "index.json").read_text())["manifests"]:
        if (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name") == version:
            return str(entry["digest"])
    raise StepFailed(f"{layout}: no index tagged {version} in index.json")


def push(layout: Path, prefix: str, version: str, tls: bool, env: Mapping[str, str]) -> Pushed:
    """skopeo copy the layout's index (every platform, digests preserved); read it back."""
    repo = f"{prefix.rstrip('/')}/{layout.name}"
    auth = [f"--dest-authfile={env['REGISTRY_AUTH_FILE']}"] if env.get("REGISTRY_AUTH_FILE") else []
    read_auth = [f"--authfile={env['REGISTRY_AUTH_FILE']}"] if auth else []
    _run(["skopeo", "copy", "--all", "--preserve-digests", f"--dest-tls-verify={str(tls).lower()}",
          *auth, f"oci:{layout}:{version}", f"docker://{repo}:{version}"], env)
    raw = _run(["skopeo", "inspect", "--raw", f"--tls-verify={str(tls).lower()}", *read_auth,
                f"docker://{repo}:{version}"], env)
    digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    if digest != (expected := _layout_index(layout, version)):
        raise StepFailed(f"{repo}:{version} is {digest} in the registry, {expected} in {layout}")
    manifests = json.loads(raw).get("manifests") or []
    return Pushed(repo, digest, {_platform(m): str(m["digest"]) for m in manifests})


def publish(out: Path, prefix: str, version: str, tls: bool, from_env: str) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("COSIGN_KEY", "COSIGN_PUB"):
        if not env.get(var):
            raise StepFailed(f"{var} is not set (the CI secret / public key path)")
    if env.get("REGISTRY_AUTH_FILE") and not env.get("UMEC_DOCKER_CONFIG"):
        env["UMEC_DOCKER_CONFIG"] = env["REGISTRY_AUTH_FILE"]
    layouts = sorted(p for p in (out / "oci").iterdir() if (p / "index.json").is_file())
    if not layouts:
        raise StepFailed(f"{out}/oci holds no OCI layout (run scripts/build-images.sh first)")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="umec-publish-") as name:
        for layout in layouts:
            pushed = push(layout, prefix, version, tls, env)
            for argv in sign_and_attest(pushed, layout, Path(name), from_env):
                _run([UMEC, *argv], env)
            for argv in verify(pushed, env["COSIGN_PUB"]):
                _run([UMEC, *argv], env)
            results[layout.name] = {"ref": f"{pushed.repo}:{version}", "index": pushed.index,
                                    "platforms": pushed.platforms,
                                    "verified": ["signature", "spdxjson", "slsaprovenance1"]}
            print(f"{pushed.repo}:{version} {pushed.index} signed+attested+verified "
                  f"({', '.join(sorted(pushed.platforms))})")
    return results


def _default_from_env() -> str:
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    return "gitlab" if os.environ.get("GITLAB_CI") == "true" else "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="publish-images", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("prefix", help="registry prefix, e.g. ghcr.io/acme/umec")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--insecure", action="store_true",
                        help="no TLS verification by skopeo (a local test registry only)")
    parser.add_argument("--from-env", choices=["github", "gitlab", "none"],
                        default=_default_from_env(), help="provenance source (default: the CI)")
    args = parser.parse_args(argv)
    from kernel.errors import CheckedError
    try:
        results = publish(args.out, args.prefix, args.version, not args.insecure, args.from_env)
    except CheckedError as exc:
        print(f"publish-images: {exc} (what to do: {exc.hint})", file=sys.stderr)
        return 1
    (args.out / "published.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
