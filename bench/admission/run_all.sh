#!/usr/bin/env bash
# Run the admission benchmarks one after another (they must not share the 2 cores with each
# other) and print their Markdown; docs/benchmarks.md ("Admission") explains each one.
#   bench/admission/run_all.sh 2>&1 | tee /tmp/bench-admission.md
# Needs: .venv and docker-registry (scripts/setup.sh). py-spy is optional (profiled extra runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
spy=()
[ -x .venv/bin/py-spy ] && spy=(--py-spy)
echo "# bench_webhook.py"; .venv/bin/python bench/admission/bench_webhook.py "${spy[@]}"
echo; echo "# bench_parts.py"; .venv/bin/python bench/admission/bench_parts.py
for v in sql batched loop-batched; do   # what-if servers: control, then the two record fixes
    echo; echo "# bench_webhook.py --variant \"--records $v\""
    .venv/bin/python bench/admission/bench_webhook.py --cold 50 --cli-signs 0 --variant "--records $v"
done
