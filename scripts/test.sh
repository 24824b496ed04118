#!/usr/bin/env bash
# The test command (README, .ci/run): set up, start services, lint, type-check, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
.venv/bin/ruff check .
.venv/bin/mypy
# Two workers, one file per worker at a time (module fixtures stay in one process): the suite
# waits on swtpm, subprocesses, browsers and databases as much as it computes, so two workers
# on the two cores take 13 min where one took 20-23. UMEC_TEST_WORKERS=0 runs it serially.
exec .venv/bin/pytest -q -p no:cacheprovider -n "${UMEC_TEST_WORKERS:-2}" --dist loadfile "$@"
