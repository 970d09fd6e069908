#!/usr/bin/env bash
# Build the Python package (python/, see docs/python.md) into a venv and run
# its tests (python/tests). Called by scripts/test.sh after the cargo tests.
#
# - The venv (.venv-py, or $BALANS_PY_VENV) is created when missing, with
#   maturin, pytest, pandas, pyarrow and anndata from PyPI.
# - `maturin develop` builds the extension in the dev profile (the CLI's
#   debug build settings) into the shared target/, so the dependencies the
#   cargo tests compiled are reused where their features match; a release
#   build (what `pip install .` does) would add minutes for nothing the tests
#   need.
# - The tests compare against the CLI (target/debug/balans, built here if
#   the cargo tests did not).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BALANS_PY_VENV:-.venv-py}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import maturin, pytest, pandas, pyarrow, anndata' 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "maturin>=1.7,<2" pytest pandas pyarrow anndata
fi
cargo build --quiet --bin balans
started=$SECONDS
CARGO_TARGET_DIR="$PWD/target" VIRTUAL_ENV="$PWD/$venv" \
  "$venv/bin/maturin" develop --quiet --manifest-path python/Cargo.toml
echo "python package built in $((SECONDS - started))s"
BALANS_BIN="$PWD/target/debug/balans" "$venv/bin/python" -m pytest -q python/tests "$@"
