#!/usr/bin/env bash
# Check the images scripts/build-images.sh wrote to OUT_DIR:
#   static, every architecture: every ELF file is code for the image's architecture and every
#     wheel's tags fit it; user 10001, entrypoint umec (the sample app's: python3.11 -m …);
#   --run (root: umoci unpack, unshare, chroot): the amd64 images run `umec --help`, import
#     their native modules, and umec-trust's `umec server` answers /healthz (SQLite); the
#     sample app's image imports its modules, lacks the platform's heavy ones, answers /healthz;
#   --compare OTHER_OUT: same index digests as another build (reproducibility);
#   --push: push both indexes to a local docker-registry (skopeo), `umec sign --recursive`,
#     `umec verify` each digest.
#   scripts/check-images.sh OUT_DIR [--run] [--compare OTHER_OUT] [--push]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/check-images.sh OUT_DIR [--run] [--compare DIR] [--push]" >&2; exit 2; }
out=$1; shift
exec .venv/bin/python -m scripts.imagebuild.check --out "$out" "$@"
