#!/usr/bin/env bash
# The test command (README, .ci/run): set up, start services, lint, type-check, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
