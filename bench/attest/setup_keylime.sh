#!/usr/bin/env bash
# Create the benchmark-only virtualenv bench/.venv-keylime holding Keylime (for
# bench_quote.py's comparison) plus this project installed editable, so that one
# script can import both `keylime.tpm.tpm_util` and `attest.core.quote`.
#
# It is kept apart from the main .venv on purpose: Keylime pins its own
# dependency set and must never leak into the product's environment.
# Idempotent: re-running only re-installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."            # repository root
VENV=bench/.venv-keylime
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet keylime
# keylime.ima (bench_ima.py) imports these, which Keylime's wheel does not declare.
"$VENV/bin/pip" install --quiet jsonschema lark
# Our project next to it, with the [node] extra (tpm2-pytss) so bench_quote.py can also take
# quotes from a real swtpm in the same process.
"$VENV/bin/pip" install --quiet -e ".[node]"
# uvicorn's C HTTP parser and event loop, for bench_rounds.py --variant what-if runs only
# (the product's venv has neither, so `umec server` runs on h11 + asyncio there).
"$VENV/bin/pip" install --quiet httptools uvloop
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import keylime.tpm.tpm_util  # noqa: F401  (fails loudly if keylime does not import)
import attest.core.quote  # noqa: F401
print("keylime", md.version("keylime"), "+ umec-trust", md.version("umec-trust"), "ready")
PY
