#!/usr/bin/env bash
# Reproduce bench/quality.md: cosine only vs the shipped defaults, on qqp-dev and on the
# adversarial look-alike set.  Results (text + one JSON line each) go to bench/results/.
# Usage: bench/quality.sh [QQP_FILE]   (default ../shared/data/qqp-dev.jsonl, beside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
QQP=${1:-../shared/data/qqp-dev.jsonl}
PY=${PYTHON:-.venv/bin/python}
mkdir -p bench/results
run() {  # name, then eval arguments
  local name=$1
  shift
  echo "== $name: semantic-cache eval $*" >&2
  /usr/bin/time -f "%e s wall, %M KB max RSS" "$PY" -m extproc.cli --log-level warning eval --config config/config.yaml \
    --sweep --json "$@" | tee "bench/results/$name.txt"
}
run adversarial-cosine --pairs tests/data/adversarial.jsonl --guards none
run adversarial-shipped --pairs tests/data/adversarial.jsonl
run qqp-cosine --pairs "$QQP" --guards none
run qqp-shipped --pairs "$QQP"
