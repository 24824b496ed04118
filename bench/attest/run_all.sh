#!/usr/bin/env bash
# Run every attestation benchmark, one after another (they must not share the 2 cores with each
# other), and print their Markdown tables; docs/benchmarks.md explains each one.
#   bench/attest/run_all.sh 2>&1 | tee /tmp/bench-attest.md
# Needs: .venv (scripts/setup.sh), swtpm + tpm2-tools, and for bench_quote.py the benchmark venv
# made by bench/attest/setup_keylime.sh (created here when missing). py-spy is optional.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x bench/.venv-keylime/bin/python ] || bash bench/attest/setup_keylime.sh
spy=()
[ -x .venv/bin/py-spy ] && spy=(--py-spy 20)
echo "# bench_quote.py"; bench/.venv-keylime/bin/python bench/attest/bench_quote.py --profile
echo; echo "# bench_rounds.py (umec server as deployed)"
.venv/bin/python bench/attest/bench_rounds.py --nodes 1000 "${spy[@]}"
echo; echo "# bench_rounds.py, one client thread (unloaded latency)"
.venv/bin/python bench/attest/bench_rounds.py --nodes 1000 --threads 1 --rounds 600 --warmup 50
echo; echo "# bench_rounds.py what-if: httptools + uvloop"
.venv/bin/python bench/attest/bench_rounds.py --nodes 1000 --python bench/.venv-keylime/bin/python \
    --variant "--http httptools --loop uvloop"
echo; echo "# bench_rounds.py what-if: httptools + uvloop, no BaseHTTPMiddleware"
.venv/bin/python bench/attest/bench_rounds.py --nodes 1000 --python bench/.venv-keylime/bin/python \
    --variant "--http httptools --loop uvloop --no-metrics-middleware"
echo; echo "# bench_agent_memory.py"; .venv/bin/python bench/attest/bench_agent_memory.py
echo; echo "# bench_eventlog.py"; .venv/bin/python bench/attest/bench_eventlog.py
