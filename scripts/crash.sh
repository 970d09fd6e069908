#!/usr/bin/env bash
# Crash drill through a real broker (issue #15, "Harden by method"): stream
# PLATES distinct plates into `balans serve` (Kafka mode), kill the daemon
# with SIGKILL KILLS times and restart the broker BROKER_RESTARTS times at
# random moments, then check that every plate came out (an aligned output
# each; valid plates are never dead-lettered), none was incorporated twice
# (one model version per plate, all distinct) and every re-publication is
# bit-identical to the first, under the same model version.
#
#   scripts/crash.sh [PLATES [KILLS [BROKER_RESTARTS]]]   (default 200 20 2)
#   env: BALANS_CRASH_SEED (15) picks the moments.
#
# The drill is tests/serve_kafka/drills.rs (the test suite runs it at 24
# plates, 4 kills, 1 broker restart); it starts a private tansu broker with
# scripts/broker.sh. Prints one line of figures. Runs under nice -n 10.
set -uo pipefail
cd "$(dirname "$0")/.."
plates=${1:-200}
kills=${2:-20}
restarts=${3:-2}
mkdir -p target/crash
log=target/crash/crash-$(date -u +%Y%m%dT%H%M%SZ).log
BALANS_TEST_BROKERS=${BALANS_TEST_BROKERS:-private} \
BALANS_CRASH_PLATES=$plates BALANS_CRASH_KILLS=$kills BALANS_CRASH_BROKER_RESTARTS=$restarts \
  nice -n 10 cargo nextest run --test serve_kafka --no-capture \
    -E 'test(=drills::crash_drill_kills_and_broker_restarts_lose_nothing_and_replay_identically)' \
    >"$log" 2>&1
rc=$?
grep -E '^(crash drill|broker restarted|test result)' "$log"
if [[ $rc -ne 0 ]]; then
  grep -A3 'panicked at' "$log" | head -20
fi
echo "full log: $log"
exit $rc
