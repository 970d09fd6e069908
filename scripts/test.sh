#!/usr/bin/env bash
# The test command (README). Builds the dev profile and runs every test.
# Starts any service the tests need itself.
set -euo pipefail
cd "$(dirname "$0")/.."
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
# Doc tests (nextest does not run them).
cargo test --doc --quiet
