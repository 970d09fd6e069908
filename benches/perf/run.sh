#!/usr/bin/env bash
# One command: balans correct vs harmonypy, whole process, side by side.
#   bash benches/perf/run.sh                      sizes 100k, 300k, 1M
#   PERF_SIZES=100000 bash benches/perf/run.sh    one size
#   bash benches/perf/run.sh width                100k x 50 vs 100k x 1000
#     (balans only; PERF_WIDTH_ROWS, PERF_WIDTH_FEATURES, PERF_REPEAT)
# Env: PERF_SKIP_HARMONY=1 (balans only), PERF_BALANS_ARGS="--budget 0.3 ..."
# (extra `balans correct` flags), PERF_WRITE_DOC=0 (do not touch
# docs/performance.md), BALANS_BIN (binary to time; default: build release).
# Creates .venv-perf (gitignored) with harmonypy 2.1.0 and the pins of
# benches/anchors/requirements.txt it needs; tables are cached in out/perf/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv-perf"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pins=$(grep -E '^(harmonypy|pandas|pyarrow|numpy)==' benches/anchors/requirements.txt)
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet --disable-pip-version-check $pins
if [ -z "${BALANS_BIN:-}" ]; then
  cargo build --release --quiet
  BALANS_BIN="$ROOT/target/release/balans"
fi
export BALANS_BIN
exec "$VENV/bin/python" benches/perf/compare.py "$@"
