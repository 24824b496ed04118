#!/usr/bin/env bash
# Build the umec-trust and umec-agent OCI images, and the sample app's umec-classifier-app
# (linux/amd64 + linux/arm64, one image index each) without a Docker engine: Debian packages
# of the target architecture, PyPI wheels for
# the target platform, reproducible layers. Inputs are pinned in scripts/images.lock.json.
#   scripts/build-images.sh OUT_DIR [--update-lock] [--commit REV] [--images ...] [--arch ...]
# Needs (installed here if missing): gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, pkg-config,
# python3-venv, umoci, skopeo. Output: OUT_DIR/oci/<image> (OCI layouts, tag 0.1.0),
# OUT_DIR/report.json (digests, sizes, times), OUT_DIR/cache (downloads, reused).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/build-images.sh OUT_DIR [options]" >&2; exit 2; }
out=$1; shift
need=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross pkg-config python3-venv umoci skopeo; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "build-images: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
exec .venv/bin/python -m scripts.imagebuild.build --out "$out" "$@"
