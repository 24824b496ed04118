#!/usr/bin/env bash
# Idempotent setup on a fresh Debian machine: system packages, then a virtualenv in .venv with
# the project installed (node extra: tpm2-pytss; test extra: pytest, hypothesis, ruff, mypy).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config gcc python3-venv python3-dev
      docker-registry skopeo umoci faketime mosquitto
      # The dashboard's browser tests: Playwright drives Debian's Chromium (its own browser
      # download cannot be reached).
      chromium)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.umec-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch only exports the classifier to ONNX once; take the CPU build (PyPI's default wheel
  # is a multi-GB CUDA build). Offline mirrors with a local torch wheel satisfy this too.
  .venv/bin/pip install -q --retries 0 --timeout 10 \
      --extra-index-url https://download.pytorch.org/whl/cpu 'torch==2.13.*' 2>/dev/null \
    || .venv/bin/pip install -q 'torch==2.13.*'
  .venv/bin/pip install -q -e '.[node,test,export]'
  touch "$stamp"
fi
# Independent bundle verifier for the tests (@sigstore/verify from npm), when node is present.
if command -v npm >/dev/null && [ -f tests/js/package-lock.json ] && [ ! -d tests/js/node_modules ]; then
  (cd tests/js && npm ci --silent --no-audit --no-fund) || echo "setup: npm ci failed; the bundle interop test will skip"
fi
echo "setup: ok ($(.venv/bin/python --version), umec at .venv/bin/umec)"
