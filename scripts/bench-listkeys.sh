#!/usr/bin/env bash
# ListKeys page latency over 1,000,000 keys, at depth 0 and at depth 900,000
# (target: <= 10 ms per page of 100 at any depth; BENCHMARKS.md):
#
#   bash scripts/bench-listkeys.sh            # 1,000,000 keys
#   bash scripts/bench-listkeys.sh --quick    # 10,000 keys, debug build (CI smoke run)
#
# 1. In process: `cargo bench --bench listkeys` seeds a SQLite database
#    (multi-row INSERTs, organization `bench`, ULID-shaped increasing ids) and
#    times `Store::list_keys` pages of 100 at depth 0 and at depth 90% of the
#    keys (after_id = the id at that position), printing percentiles.
# 2. Through the server: the same database, an admin key from `keyward
#    bootstrap`, `keyward serve` on a free 127.0.0.1 port, and h2load sending
#    the same two ListKeys requests one at a time (-c 1 -m 1: latency, not
#    throughput) with the admin key; p50/p99 from h2load's per-request log.
#
# Settings (environment):
#   BENCH_KEYS=1000000       keys to seed (quick: 10000)
#   BENCH_DB=PATH            SQLite file to seed and keep (reused when it
#                            already holds the keys: seeding 1M takes a while)
#   BENCH_REQUESTS=500       timed pages per depth through the server (quick: 20)
#   KEYWARD_BIN=PATH         use this keyward binary, build nothing
#   BENCH_KEEP=1             keep the temporary directory
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench-listkeys: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [[ $QUICK == 1 ]]; then
  KEYS="${BENCH_KEYS:-10000}"
  REQUESTS="${BENCH_REQUESTS:-20}"
else
  KEYS="${BENCH_KEYS:-1000000}"
  REQUESTS="${BENCH_REQUESTS:-500}"
fi

say() { printf '[bench-listkeys] %s\n' "$*" >&2; }
die() { printf '[bench-listkeys] error: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench-listkeys.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DB_FILE="${BENCH_DB:-$WORK/keys.db}"

# ------------------------------------------------------ 1. in process
BENCH_ARGS=(--keys "$KEYS" --db "$DB_FILE")
if [[ $QUICK == 1 ]]; then
  say "in process, $KEYS keys (debug build, quick)"
  # The test profile: what the CI test step builds anyway. Also builds
  # target/debug/keyward (binaries are built for benches).
  cargo test --workspace --all-features --bench listkeys -- --quick "${BENCH_ARGS[@]}" |
    tee "$WORK/inprocess.out"
  KEYWARD="${KEYWARD_BIN:-$ROOT/target/debug/keyward}"
else
  say "in process, $KEYS keys (cargo bench; slow to build the first time)"
  cargo bench --bench listkeys -- "${BENCH_ARGS[@]}" | tee "$WORK/inprocess.out"
  if [[ -z "${KEYWARD_BIN:-}" ]]; then
    cargo build --release -p keyward --bin keyward >&2
  fi
  KEYWARD="${KEYWARD_BIN:-$ROOT/target/release/keyward}"
fi
[[ -x "$KEYWARD" ]] || die "$KEYWARD missing"
read -r DEPTH AFTER_ID < <(sed -n 's/^LISTKEYS depth=\([0-9]*\) after_id=\([^ ]*\) .*/\1 \2/p' "$WORK/inprocess.out")
[[ -n "${AFTER_ID:-}" ]] || die "the bench printed no LISTKEYS line"

# ------------------------------------------------------ 2. through the server
bash scripts/install-tools.sh >/dev/null
command -v h2load >/dev/null || die "h2load missing"
DB="sqlite://$DB_FILE?mode=rwc"
ADMIN="$("$KEYWARD" bootstrap --database-url "$DB" --organization bench --name "bench listkeys admin" 2>"$WORK/bootstrap.log")" ||
  { cat "$WORK/bootstrap.log" >&2; die "bootstrap failed"; }

# ListKeysRequest { optional int32 limit = 1; string after_id = 2; } in a gRPC frame.
python3 - "$AFTER_ID" "$WORK" <<'PY'
import struct, sys
after, work = sys.argv[1].encode(), sys.argv[2]
frame = lambda m: b"\x00" + struct.pack(">I", len(m)) + m
limit = bytes([0x08, 100])
open(f"{work}/top.bin", "wb").write(frame(limit))
open(f"{work}/deep.bin", "wb").write(frame(limit + bytes([0x12, len(after)]) + after))
PY

# serve_and_measure LABEL [ENV...]: starts keyward (with ENV), times both
# pages, prints the table, stops keyward.
serve_and_measure() {
  local label="$1"
  shift
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  env RUST_LOG=warn "$@" "$KEYWARD" serve --database-url "$DB" --listen "127.0.0.1:$PORT" >"$WORK/keyward.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/keyward.log" >&2; die "keyward exited"; }
    sleep 0.1
  done
  URL="http://127.0.0.1:$PORT/keyward.v1.KeyAdminService/ListKeys"
  H2=(-c 1 -m 1 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $ADMIN")
  run top "$WORK/top.bin"
  run deep "$WORK/deep.bin"
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  summary "$label"
}
run() { # run NAME BODY
  rm -f "$WORK/$1.tsv" # h2load appends to its log
  h2load "${H2[@]}" -n 20 -d "$2" "$URL" >"$WORK/$1-warm.out" 2>&1 || true
  h2load "${H2[@]}" -n "$REQUESTS" -d "$2" --log-file "$WORK/$1.tsv" "$URL" >"$WORK/$1.out" 2>&1 ||
    { cat "$WORK/$1.out" >&2; die "h2load $1 failed"; }
}
summary() { # summary LABEL
  python3 - "$WORK" "$REQUESTS" "$KEYS" "$DEPTH" "$QUICK" "$1" <<'PY'
import re, sys
work, requests, keys, depth, quick, label = sys.argv[1:]
requests = int(requests)
def result(name):
    out = open(f"{work}/{name}.out").read()
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    data = int(re.search(r"traffic: .*\((\d+)\) data", out).group(1))
    ok = m and int(m.group(3)) == requests
    # 100 keys of ~150 bytes each: a gRPC error would be a 200 with no body.
    if not ok or data < requests * 100 * 100:
        sys.exit(f"ListKeys {name}: requests failed or pages too small:\n{out}")
    lat = sorted(int(l.split("\t")[2]) for l in open(f"{work}/{name}.tsv") if l.strip())
    pct = lambda p: lat[min(len(lat) - 1, max(0, -(-len(lat) * p // 100) - 1))] / 1000
    return pct(50), pct(99), data / requests
print()
print(f"{label} (gRPC ListKeys, limit 100, h2load -c 1 -m 1, {requests} requests each):")
print("| depth | p50 ms | p99 ms | response bytes |")
print("|---:|---:|---:|---:|")
worst = 0
for text, name in [("0", "top"), (f"{int(depth):,}", "deep")]:
    p50, p99, size = result(name)
    worst = max(worst, p50)
    print(f"| {text} | {p50:.3f} | {p99:.3f} | {size:,.0f} |")
verdict = "not judged (--quick)" if quick == "1" else ("met" if worst <= 10 else f"MISSED by {worst - 10:.3f} ms")
print(f"\nListKeys over {int(keys):,} keys, {label}: worst median {worst:.3f} ms (target <= 10 ms: {verdict})")
PY
}

UPTIME_BEFORE="$(uptime)"
serve_and_measure "through the server"
UPTIME_AFTER="$(uptime)"
echo
echo "load before: $UPTIME_BEFORE"
echo "load after:  $UPTIME_AFTER"
