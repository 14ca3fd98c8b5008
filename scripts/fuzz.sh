#!/usr/bin/env bash
# Long fuzzing run of keyward's property/fuzz targets (RELIABILITY.md):
#   bash scripts/fuzz.sh [SECONDS]        # default 600 (10 minutes)
# Runs the targets of crates/keyward-core/tests/fuzz.rs and tests/api/fuzz.rs
# (the same ones `cargo test` runs with a small budget) in rounds, each round
# with fresh random seeds and a per-target time bound, until SECONDS have
# passed. A target that fails is reported (seed to replay it with
# KEYWARD_FUZZ_SEED, smallest failing input) and left out of later rounds;
# the others go on. At the end prints executions per target, the total and
# the failures, and exits non-zero if any target failed.
# Logs of every round: target/fuzz-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL="${1:-600}"
if ! [[ "$TOTAL" =~ ^[0-9]+$ ]] || [ "$TOTAL" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS]" >&2
  exit 2
fi
# Longest a target runs in one round, so every target gets fresh seeds
# several times in a long run.
ROUND_MAX="${FUZZ_ROUND_SECONDS:-60}"
THREADS="${FUZZ_THREADS:-2}"
LOGS=target/fuzz-logs
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log

echo "==== building the fuzz targets"
cargo test -p keyward-core --test fuzz --no-run
cargo test --test api --no-run

# name|cargo arguments|libtest filter|number of targets
SUITES=(
  "core|-p keyward-core --test fuzz||9"
  "api|--test api|fuzz::|8"
)
declare -A SKIP=()   # suite -> "--skip NAME ..." of failed targets
declare -A EXECUTIONS=()
FAILURES=()
start=$(date +%s)
round=0
while :; do
  for suite in "${SUITES[@]}"; do
    IFS='|' read -r name cargo_args filter targets <<<"$suite"
    remaining=$((TOTAL - ($(date +%s) - start)))
    [ "$remaining" -ge 5 ] || break 2
    # Targets run $THREADS at a time: bound each so the suite fits.
    batches=$(((targets + THREADS - 1) / THREADS))
    per_target=$((remaining / batches))
    [ "$per_target" -le "$ROUND_MAX" ] || per_target=$ROUND_MAX
    [ "$per_target" -ge 1 ] || per_target=1
    round=$((round + 1))
    log="$LOGS/round-$round-$name.log"
    echo "==== round $round: $name, ${per_target}s per target, ${remaining}s left"
    # shellcheck disable=SC2086 # word splitting of the argument lists is intended
    if KEYWARD_FUZZ_CASES=1000000000 KEYWARD_FUZZ_SECONDS="$per_target" \
      cargo test $cargo_args -- $filter ${SKIP[$name]:-} --nocapture --test-threads "$THREADS" \
      >"$log" 2>&1; then
      :
    fi
    while read -r target executions; do
      EXECUTIONS[$target]=$((${EXECUTIONS[$target]:-0} + executions))
    done < <(sed -n 's/.*FUZZ target=\([^ ]*\) executions=\([0-9]*\) .*/\1 \2/p' "$log")
    # libtest lists failed tests after `failures:`, one per indented line.
    failed_tests=$(sed -n '/^failures:$/,/^test result:/p' "$log" | sed -n 's/^    \([^ ]*\)$/\1/p' | sort -u)
    for failed in $failed_tests; do
      SKIP[$name]="${SKIP[$name]:-} --skip $failed"
      FAILURES+=("$failed (round $round, log $log)")
    done
    if [ -n "$failed_tests" ]; then
      echo "!!!! FAILED: $failed_tests"
      echo "!!!! panics, seeds (replay with KEYWARD_FUZZ_SEED=...) and smallest inputs:"
      grep -A25 "failed; replay with KEYWARD_FUZZ_SEED" "$log" | grep -v '^ *[0-9]*: \|^  *at ' | head -80 || true
    fi
    if ! grep -q '^test result:' "$log"; then
      # The binary did not run its tests at all (build error, crash): stop.
      echo "!!!! $name did not run; see $log" >&2
      tail -40 "$log" >&2
      exit 1
    fi
  done
done

elapsed=$(($(date +%s) - start))
echo
echo "==== fuzz summary: ${elapsed}s, $round suite runs"
total=0
for target in $(printf '%s\n' "${!EXECUTIONS[@]}" | sort); do
  printf '%-50s %12d executions\n' "$target" "${EXECUTIONS[$target]}"
  total=$((total + EXECUTIONS[$target]))
done
printf '%-50s %12d executions\n' "total" "$total"
echo "failures: ${#FAILURES[@]}"
for failure in "${FAILURES[@]}"; do
  echo "  $failure"
done
[ "${#FAILURES[@]}" -eq 0 ]
