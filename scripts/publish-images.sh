#!/usr/bin/env bash
# Publish what scripts/build-images.sh wrote to OUT_DIR (issue 12): for each OCI layout in
# OUT_DIR/oci, skopeo copy --all --preserve-digests to PREFIX/<name>:<version>, then
# `umec sign --recursive` the index, `umec sbom` + `umec attest --type spdxjson` per platform
# (on the platform manifest and on the index), `umec provenance` + `umec attest --type
# slsaprovenance1` on the index, and `umec verify` / `umec verify-attestation` of every digest.
#   scripts/publish-images.sh OUT_DIR REGISTRY_PREFIX [--version V] [--insecure] [--from-env CI]
# Environment: COSIGN_KEY (the private key's PEM text), COSIGN_PASSWORD, COSIGN_PUB (public key
# file), REGISTRY_AUTH_FILE (optional: auth.json / docker config.json with the push credentials).
# --insecure: skopeo without TLS verification, for a local test registry only.
# Output: one line per image, OUT_DIR/published.json. Exit 1 with one line on stderr on the
# first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: scripts/publish-images.sh OUT_DIR REGISTRY_PREFIX [--insecure]" >&2; exit 2; }
command -v skopeo >/dev/null || { echo "publish-images: skopeo is not installed (apt-get install skopeo)" >&2; exit 1; }
exec .venv/bin/python -m scripts.imagebuild.publish "$@"
