#!/usr/bin/env bash
# The one command to rerun the anchor harness: bash benches/anchors/run.sh [run_anchors.py options]
#   bash benches/anchors/run.sh --all        BBBC021 anchors, LINCS semi-synthetic sets, oracle ceiling
#   bash benches/anchors/run.sh --semisynth  only the LINCS semi-synthetic sets (benches/anchors/semisynth.py)
#   bash benches/anchors/run.sh --ceiling    only the BBBC021 oracle ceiling (benches/anchors/ceiling.py)
#   bash benches/anchors/run.sh --stream-gap streamed vs offline balans on every split and set
#                                            (benches/anchors/stream_gap.py; docs/stream_gap.md)
#   bash benches/anchors/run.sh --test       the harness's own tests (benches/anchors/test_*.py)
#
# - creates .venv-anchors in the repo root if missing and installs the pins of
#   benches/anchors/requirements.txt into it;
# - uses the balans binary in $BALANS_BIN, else target/release/balans, else target/debug/balans,
#   else builds it
#   (cargo build --release);
# - Seurat RPCA runs only when Rscript and the Seurat R package are installed;
#   ANCHORS_INSTALL_SEURAT=1 installs Debian's r-cran-seurat first (about 650 MB, needs root);
# - writes out/anchors/*.parquet (corrected tables), docs/anchors.md and docs/anchors.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv-anchors"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[run.sh] creating $VENV" >&2
  "$PY" -m venv "$VENV" || { echo "[run.sh] error: '$PY -m venv' failed (install python3-venv)" >&2; exit 1; }
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/anchors/requirements.txt \
  || { echo "[run.sh] error: pip install of benches/anchors/requirements.txt failed" >&2; exit 1; }

if [ "${ANCHORS_INSTALL_SEURAT:-0}" = "1" ] && ! Rscript -e 'library(Seurat)' >/dev/null 2>&1; then
  echo "[run.sh] installing r-cran-seurat (Debian)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends r-cran-seurat \
    || { echo "[run.sh] error: apt-get install r-cran-seurat failed" >&2; exit 1; }
fi

if [ -z "${BALANS_BIN:-}" ]; then
  if [ -x target/release/balans ]; then
    BALANS_BIN="$ROOT/target/release/balans"
  elif [ -x target/debug/balans ]; then
    BALANS_BIN="$ROOT/target/debug/balans"
  else
    echo "[run.sh] building balans (cargo build --release)" >&2
    cargo build --release --quiet || { echo "[run.sh] error: cargo build --release failed" >&2; exit 1; }
    BALANS_BIN="$ROOT/target/release/balans"
  fi
fi
export BALANS_BIN

case "${1:-}" in
  --semisynth) shift; exec "$VENV/bin/python" benches/anchors/semisynth.py "$@" ;;
  --ceiling) shift; exec "$VENV/bin/python" benches/anchors/ceiling.py "$@" ;;
  --stream-gap) shift; exec "$VENV/bin/python" benches/anchors/stream_gap.py "$@" ;;
  --test) shift; exec "$VENV/bin/python" -m unittest discover -s benches/anchors -p 'test_*.py' "$@" ;;
  --all)
    shift
    "$VENV/bin/python" benches/anchors/run_anchors.py "$@"
    "$VENV/bin/python" benches/anchors/semisynth.py
    exec "$VENV/bin/python" benches/anchors/ceiling.py ;;
esac
exec "$VENV/bin/python" benches/anchors/run_anchors.py "$@"
