#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of every decoder of
# outside bytes (issue #15, "Harden by method"): the targets of fuzz/.
#
#   scripts/fuzz.sh [RUNS] [TARGETS...]
#   scripts/fuzz.sh keep [TARGETS...]   only FUZZ_KEEP's step, for earlier runs
#     RUNS     inputs per target (default 10000000)
#     TARGETS  default: all of  ipc_stream ipc_file parquet csv chunks wal snapshot
#   env: FUZZ_MAX_SECS  also stop a target after this many seconds (default: none)
#        FUZZ_RSS_MB    -rss_limit_mb / -malloc_limit_mb (default 2048)
#        FUZZ_TIMEOUT   -timeout per input in seconds (default 10: a hang)
#        FUZZ_JOBS      parallel libFuzzer workers per target (default 1)
#        FUZZ_KEEP      1: after each target, merge its grown corpus
#                       (fuzz/work/T, libFuzzer -merge=1: the inputs that add
#                       coverage) into fuzz/kept/T.tar.gz, which is committed;
#                       a target whose fuzz/work/T is empty starts from it
#        FUZZ_SANITIZER address (default) or none: `wal` and `chunks` run
#                       only balans's own code, which has no `unsafe`, so
#                       AddressSanitizer finds nothing there and costs most
#                       of the time (docs/reliability.md, "Fuzzing")
#
# Needs `cargo install cargo-fuzz` and the nightly toolchain. One target at a
# time, under nice -n 10. The seed corpus is fuzz/corpus/<target>/ (small,
# committed; regenerate with the ignored test `write_fuzz_seeds` in
# tests/decode_props.rs); what libFuzzer finds goes to fuzz/work/<target>/
# (kept between runs, not committed; its minimised merge is fuzz/kept/,
# committed, see FUZZ_KEEP); crashes, timeouts and out-of-memory
# inputs to fuzz/artifacts/<target>/. Each target's figures (runs, exec/s,
# corpus size, crashes, time) are printed and appended to the table in
# docs/reliability.md ("Fuzzing").
set -uo pipefail
cd "$(dirname "$0")/.."
keep_only=0
if [[ ${1:-} == keep ]]; then
  # scripts/fuzz.sh keep [TARGETS...]: only keep the corpora of earlier runs.
  keep_only=1
  shift
  set -- 0 "$@"
fi
runs=${1:-10000000}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(ipc_stream ipc_file parquet csv chunks wal snapshot)
rss=${FUZZ_RSS_MB:-2048}
timeout=${FUZZ_TIMEOUT:-10}
jobs=${FUZZ_JOBS:-1}
san=${FUZZ_SANITIZER:-address}
doc=docs/reliability.md
marker='<!-- scripts/fuzz.sh appends its rows above this line -->'

if [[ ! -d fuzz/corpus/${targets[0]} ]]; then
  BALANS_FUZZ_SEEDS=$PWD/fuzz/corpus cargo nextest run --test decode_props \
    --run-ignored only write_fuzz_seeds >/dev/null
fi
mkdir -p fuzz/logs
nice -n 10 cargo +nightly fuzz build -s "$san" --debug-assertions || exit 1

# The inputs of fuzz/work/T (and the seeds) that add coverage, minimised by
# libFuzzer's merge, as fuzz/kept/T.tar.gz (flat file names).
keep_corpus() {
  local t=$1 min
  min=$(mktemp -d)
  nice -n 10 cargo +nightly fuzz run -s "$san" --debug-assertions "$t" "$min" \
    "fuzz/work/$t" "fuzz/corpus/$t" -- -merge=1 -rss_limit_mb="$rss" \
    -malloc_limit_mb="$rss" -timeout="$timeout" -max_len=65536 >/dev/null 2>&1 &&
    mkdir -p fuzz/kept &&
    tar -czf "fuzz/kept/$t.tar.gz" -C "$min" . &&
    echo "kept $(ls "$min" | wc -l) inputs of $t in fuzz/kept/$t.tar.gz"
  rm -rf "$min"
}

if [[ $keep_only == 1 ]]; then
  for t in "${targets[@]}"; do keep_corpus "$t"; done
  exit 0
fi

status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
  # Resume from the kept corpus of earlier runs (fuzz/kept/, committed).
  if [[ -z $(ls -A "fuzz/work/$t") && -f fuzz/kept/$t.tar.gz ]]; then
    tar -xzf "fuzz/kept/$t.tar.gz" -C "fuzz/work/$t"
  fi
  before=$(ls "fuzz/artifacts/$t" | wc -l)
  log=fuzz/logs/$t-$(date -u +%Y%m%dT%H%M%SZ).log
  extra=()
  [[ -n ${FUZZ_MAX_SECS:-} ]] && extra+=(-max_total_time="$FUZZ_MAX_SECS")
  [[ $jobs -gt 1 ]] && extra+=(-fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  start=$(date +%s)
  nice -n 10 cargo +nightly fuzz run -s "$san" --debug-assertions "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -runs="$runs" -rss_limit_mb="$rss" -malloc_limit_mb="$rss" -timeout="$timeout" \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" "${extra[@]}" \
    >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  executed=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  [[ -n $executed ]] || executed=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  eps=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  [[ -n $eps ]] || eps=$(( ${executed:-0} / (secs > 0 ? secs : 1) ))
  rssmb=$(grep -oE 'stat::peak_rss_mb: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  corpus=$(ls "fuzz/work/$t" "fuzz/corpus/$t" | grep -vc ':$\|^$')
  found=$(( $(ls "fuzz/artifacts/$t" | wc -l) - before ))
  kinds=$(ls -t "fuzz/artifacts/$t" | head -n "$found" | sed 's/-.*//' | sort | uniq -c | awk '{printf "%s%s %s", (NR>1 ? ", " : ""), $1, $2}')
  [[ $rc -eq 0 ]] || status=1
  tname=$t
  [[ $san == address ]] || tname="$t (-s $san)"
  line="| $(date -u +%F) | \`$tname\` | ${executed:-?} | ${eps:-?} | ${corpus} | ${found}${kinds:+ ($kinds)} | ${secs} s | ${rssmb:-?} MB |"
  echo "$line   (exit $rc, log $log)"
  if [[ ${FUZZ_KEEP:-0} == 1 ]]; then
    keep_corpus "$t"
  fi
  if grep -qF "$marker" "$doc"; then
    python3 - "$doc" "$marker" "$line" <<'PY'
import sys
path, marker, line = sys.argv[1:]
s = open(path).read()
open(path, "w").write(s.replace(marker, line + "\n" + marker, 1))
PY
  fi
done
exit $status
