#!/usr/bin/env bash
# Rate-limit and credit accuracy across replicas (issue 11; BENCHMARKS.md,
# "Rate-limit and credit accuracy"), on loopback only:
#
#   bash scripts/bench-accuracy.sh            # full run (about 5 minutes of load), prints the tables
#   bash scripts/bench-accuracy.sh --quick    # smoke run: debug binaries, 3 windows per limit, small credit counts
#
# The stack: a fresh PostgreSQL database (dropped on exit), `keyward migrate`
# once, an admin key (`keyward bootstrap`), 3 `keyward serve` replicas on that
# database sharing their counts through Redis (--redis-url), and 2
# orders-service instances (examples/orders-service: the keyward-auth layer),
# each balancing its ValidateKey calls over the 3 replicas. The driver
# (benches/load-driver, binary `accuracy`) creates one key per test and calls
# CreateOrder on the 2 services round-robin:
#   1. a limit of 100 per 1 s, 300 req/s open loop (3x), 20 full windows;
#   2. a limit of 1,000 per 10 s, 300 req/s (3x), 20 full windows (200 s);
#      both judged: admitted calls in every full window within 0.95 … 1.05 of
#      the limit (windows aligned on the epoch; the first and the last,
#      partial, dropped);
#   3. 10,000 credits spent by 64 concurrent callers until only refusals
#      come back: admitted within 99.5 … 100 % of the credits;
#   4. 1,000 credits, 1,000 idempotency keys each sent twice at once (to the
#      two services): all admitted, then a new call refused on each service.
# It prints each test's windows and figures as it goes (stderr), then a
# Markdown summary (stdout), with the ValidateKey verdicts each replica gave
# (from its /metrics), and exits non-zero if any test FAILs. With 2+ CPUs the
# servers share CPU 0 and the driver gets CPU 1 (BENCH_PIN=0: off).
#
# Settings (environment):
#   BENCH_REDIS_URL=redis://127.0.0.1:6379/   the replicas' --redis-url; empty:
#                            none (each replica counts alone: a demonstration of
#                            what Redis is for, with --per-replica-limits)
#   KEYWARD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
#                            the server the fresh database is made on (psql)
#   BENCH_RATE=300           req/s of the rate tests (at least 3x both limits)
#   BENCH_WINDOWS=20         full windows per rate test (--quick: 3)
#   BENCH_CREDITS=10000      credits of test 3 (--quick: 1000)
#   BENCH_IDEMPOTENT=1000    credits and idempotency keys of test 4 (--quick: 100)
#   BENCH_PIN=1|0            pin servers / driver to CPUs (default: 1 with 2+ CPUs)
#   KEYWARD_BIN=PATH         use the binaries already built: keyward at PATH,
#                            orders-service and accuracy next to it; build nothing
#   BENCH_KEEP=1             keep the temporary directory (logs, driver output)
# (scripts/lib/bench.sh has the shared code and these settings' details.)
# A keyward without --redis-url (before the limiter engine) runs the replicas
# without it, says so, and FAILs: nothing is enforced.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh bench-accuracy "$@"

REDIS_URL="${BENCH_REDIS_URL-redis://127.0.0.1:6379/}"
POSTGRES_URL="${KEYWARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
RATE="${BENCH_RATE:-300}"
WINDOWS="${BENCH_WINDOWS:-20}"
CREDITS="${BENCH_CREDITS:-10000}"
IDEMPOTENT="${BENCH_IDEMPOTENT:-1000}"
if [[ $QUICK == 1 ]]; then
  WINDOWS="${BENCH_WINDOWS:-3}"
  CREDITS="${BENCH_CREDITS:-1000}"
  IDEMPOTENT="${BENCH_IDEMPOTENT:-100}"
fi
REPLICAS=3
SERVICES=2

bench_build accuracy
command -v psql >/dev/null || die "psql missing (apt-get install postgresql-client)"

# ------------------------------------------------------------- database
DATABASE="keyward_bench_accuracy_$(date +%s)_$$"
psql "$POSTGRES_URL" -qtA -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DATABASE" >/dev/null ||
  die "cannot create a database on $POSTGRES_URL"
drop_database() {
  psql "$POSTGRES_URL" -qtA -c "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" >/dev/null 2>&1
}
bench_at_exit drop_database
DATABASE_URL="$(python3 -c 'import sys, urllib.parse as u
print(u.urlunsplit(u.urlsplit(sys.argv[1])._replace(path="/" + sys.argv[2])))' "$POSTGRES_URL" "$DATABASE")"
# Once, before the replicas: each would otherwise race to apply them.
"$KEYWARD" migrate --database-url "$DATABASE_URL" >"$WORK/migrate.log" 2>&1 ||
  { cat "$WORK/migrate.log" >&2; die "keyward migrate failed"; }
bench_bootstrap "$DATABASE_URL"

# ------------------------------------------------------------- replicas
# The shared counter: --redis-url when this keyward has it.
SERVE_HELP="$("$KEYWARD" serve --help)"
SERVE_ARGS=()
if [[ -z "$REDIS_URL" ]]; then
  COUNTING="each replica alone (BENCH_REDIS_URL empty)"
  if grep -q -- '--per-replica-limits' <<<"$SERVE_HELP"; then SERVE_ARGS+=(--per-replica-limits); fi
elif grep -q -- '--redis-url' <<<"$SERVE_HELP"; then
  SERVE_ARGS+=(--redis-url "$REDIS_URL")
  COUNTING="shared through Redis ($REDIS_URL)"
else
  COUNTING="NOT shared: this keyward has no --redis-url (nothing is enforced yet)"
  say "warning: $KEYWARD has no --redis-url; the replicas run without it"
fi

KEYWARD_URLS=()
METRICS_PORTS=()
for i in $(seq "$REPLICAS"); do
  port="$(free_port)"
  metrics_port="$(free_port)"
  bench_start "keyward-$i" env RUST_LOG=warn "$KEYWARD" serve --database-url "$DATABASE_URL" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" "${SERVE_ARGS[@]}"
  KEYWARD_URLS+=("http://127.0.0.1:$port")
  METRICS_PORTS+=("$metrics_port")
done
for i in $(seq "$REPLICAS"); do
  bench_wait_port "${KEYWARD_URLS[$((i - 1))]##*:}" "keyward-$i"
done

TARGETS=()
for j in $(seq "$SERVICES"); do
  port="$(free_port)"
  bench_start "orders-$j" "$ORDERS" --listen "127.0.0.1:$port" \
    --keyward-url "$(IFS=,; echo "${KEYWARD_URLS[*]}")"
  TARGETS+=("http://127.0.0.1:$port")
done
for j in $(seq "$SERVICES"); do
  bench_wait_port "${TARGETS[$((j - 1))]##*:}" "orders-$j"
done
say "$REPLICAS keyward replicas (counts $COUNTING), $SERVICES order services over all of them"

# ---------------------------------------------------------------- tests
# drive NAME MODE ARGS...: one driver run (on the load CPU), its output shown
# as it comes and kept in $WORK/NAME.out; a FAIL is remembered, not fatal, so
# every test reports.
FAILED=()
drive() {
  local name="$1" status=0
  shift
  say "test $name: accuracy $*"
  # The admin key reaches the driver in its environment, never in argv.
  KEYWARD_ADMIN_KEY="$ADMIN" "${LOAD_CPU[@]}" "$ACCURACY" "$@" \
    --keyward-url "${KEYWARD_URLS[0]}" --targets "$(IFS=,; echo "${TARGETS[*]}")" 2>&1 |
    tee "$WORK/$name.out" | sed "s/^/  $name: /" >&2 || status=$?
  case $status in
    0) ;;
    1) FAILED+=("$name") ;;
    *) die "test $name could not run (accuracy exited with status $status)" ;;
  esac
  local name_of
  for name_of in "${!PID_OF[@]}"; do bench_alive "$name_of"; done
}

drive rate-100-1s rate --limit 100 --window-secs 1 --rate "$RATE" --windows "$WINDOWS"
drive rate-1000-10s rate --limit 1000 --window-secs 10 --rate "$RATE" --windows "$WINDOWS"
drive credits credits --credits "$CREDITS" --concurrency 64
drive idempotent idempotent --credits "$IDEMPOTENT"

# -------------------------------------------------------------- summary
VERDICTS="$WORK/verdicts.txt"
: >"$VERDICTS"
for i in $(seq "$REPLICAS"); do
  python3 - "keyward-$i" "${METRICS_PORTS[$((i - 1))]}" >>"$VERDICTS" <<'PY' ||
import re, sys, urllib.request
name, port = sys.argv[1:]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
codes = {}
for line in text.splitlines():
    match = re.match(r'keyward_validations_total\{([^}]*)\} (\S+)', line)
    if match:
        code = re.search(r'code="([^"]*)"', match.group(1)).group(1)
        codes[code] = codes.get(code, 0) + int(float(match.group(2)))
print(f"{name}: " + (", ".join(f"{code} {n:,}" for code, n in sorted(codes.items()) if n) or "none"))
PY
    echo "keyward-$i: metrics unavailable" >>"$VERDICTS"
done

row() { sed -n 's/^markdown: //p' "$WORK/$1.out"; }
echo
if [[ $QUICK == 1 ]]; then
  echo "QUICK smoke run (debug binaries, $WINDOWS windows per limit, $CREDITS / $IDEMPOTENT credits)"
fi
echo "$REPLICAS keyward replicas on one PostgreSQL database, counts $COUNTING; $SERVICES orders-service"
echo "instances (keyward-auth layer), each balancing over the $REPLICAS; the driver calls CreateOrder on both"
echo "round-robin. CPU pinning: $([[ $BENCH_PIN == 1 ]] && echo 'servers on CPU 0, driver on CPU 1' || echo off)."
echo
echo "| limit | load | full windows | admitted per window min / median / max | bounds | errors | verdict |"
echo "|---|---|---:|---:|---:|---:|---|"
row rate-100-1s
row rate-1000-10s
echo
echo "| credits C | load | admitted | slack (C − admitted) / C | bound | errors | verdict |"
echo "|---|---|---:|---:|---:|---:|---|"
row credits
echo
echo "| idempotent retries | load | keys admitted (pairs + drain = total) | pairs whose copies disagree | expected | errors | verdict |"
echo "|---|---|---:|---:|---|---:|---|"
row idempotent
echo
echo "ValidateKey verdicts per replica (keyward_validations_total):"
sed 's/^/  /' "$VERDICTS"
echo
if ((${#FAILED[@]} > 0)); then
  echo "FAIL: ${FAILED[*]}"
  exit 1
fi
echo "PASS: every test"
