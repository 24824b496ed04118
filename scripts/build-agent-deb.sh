#!/usr/bin/env bash
# Build the host agent's Debian packages, umec-agent_<version>_{amd64,arm64}.deb, on an x86_64
# Debian bookworm host (the node needs no compiler: tpm2-pytss is cross-compiled here).
#   scripts/build-agent-deb.sh OUT_DIR [--arch amd64 arm64] [--commit REV]
# Inputs are the umec-agent image's, pinned in scripts/images.lock.json (wheels per platform,
# the tpm2-pytss sdist and its sysroot). Needs (installed here if missing):
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, pkg-config, python3-venv, dpkg-dev.
# Output: OUT_DIR/umec-agent_*.deb, OUT_DIR/deb-report.json, OUT_DIR/cache (downloads, reused;
# the same layout as scripts/build-images.sh, so one cache serves both).
# On the node: sudo apt install ./umec-agent_0.1.0_arm64.deb   (deploy/host/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/build-agent-deb.sh OUT_DIR [options]" >&2; exit 2; }
out=$1; shift
need=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross pkg-config python3-venv dpkg-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "build-agent-deb: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
exec .venv/bin/python -m scripts.imagebuild.agentdeb --out "$out" "$@"
