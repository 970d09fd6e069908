#!/usr/bin/env bash
# Soak: a steady plate rate through a Kafka broker into one `balans serve`
# for DURATION, sampling the daemon's RSS, open file descriptors and threads
# from /proc every few seconds (issue #15, "Harden by method").
#
#   scripts/soak.sh DURATION [RATE]
#     DURATION  seconds, or with a unit: 90s, 30m, 2h
#     RATE      plates per second (default 1)
#   env: BALANS_SOAK_SAMPLE_SECS (5), BALANS_SOAK_CSV (target/soak/soak-<time>.csv),
#        BALANS_SOAK_DISTINCT=N: ids cycle over N plates (every later plate a
#        replay: the model stops growing, so RSS must go flat)
#
# The drill (tests/serve_kafka/drills.rs `soak`) starts a private tansu
# broker with scripts/broker.sh, streams distinct plates (the test data's
# plates under new ids) at RATE, reads every aligned output, and at the end
# prints start/median/max/end RSS and fds, the plates sent and out, and the
# RSS growth from the first quarter to the half and from the half to the
# end next to the state directory's growth over the same spans (the model
# keeps every incorporated row, so RSS grows with the state; memory is
# bounded when the growth does not outpace the state's and fds stay flat).
# The samples are in the CSV. Runs under nice -n 10.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:?usage: scripts/soak.sh DURATION [RATE]}
rate=${2:-1}
case "$dur" in
  *h) secs=$(( ${dur%h} * 3600 )) ;;
  *m) secs=$(( ${dur%m} * 60 )) ;;
  *s) secs=${dur%s} ;;
  *) secs=$dur ;;
esac
mkdir -p target/soak
csv=${BALANS_SOAK_CSV:-$PWD/target/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).csv}
echo "soak: ${secs} s at ${rate} plates/s; samples -> $csv" >&2
# The drill starts its own broker; BALANS_TEST_BROKERS only marks the run
# as deliberate (the Kafka tests refuse to run without it).
BALANS_TEST_BROKERS=${BALANS_TEST_BROKERS:-private} \
BALANS_SOAK_SECS=$secs BALANS_SOAK_RATE=$rate BALANS_SOAK_CSV=$csv \
  nice -n 10 cargo nextest run --test serve_kafka --run-ignored only --no-capture \
    -E 'test(=drills::soak)' 2>&1 | grep -E '^(soak|RSS|thread|test result|error|  *FAIL|panicked)|^.*soak:' || true
test -s "$csv" && echo "samples: $csv"
