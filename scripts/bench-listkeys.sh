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
#   KEYWARD_BIN=PATH         use this keyward binary, build nothing (quick:
#                            default target/debug/keyward, which the quick
#                            in-process run builds)
#   BENCH_PIN=1|0            pin keyward to CPU 0 and h2load to CPU 1 (default: 1 with 2+ CPUs)
#   BENCH_KEEP=1             keep the temporary directory
# (scripts/lib/bench.sh has the shared code and these settings' details.)
# It exits non-zero when any step fails or any request does not succeed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh bench-listkeys "$@"

if [[ $QUICK == 1 ]]; then
  KEYS="${BENCH_KEYS:-10000}"
  REQUESTS="${BENCH_REQUESTS:-20}"
else
  KEYS="${BENCH_KEYS:-1000000}"
  REQUESTS="${BENCH_REQUESTS:-500}"
fi
DB_FILE="${BENCH_DB:-$WORK/keys.db}"

# ------------------------------------------------------ 1. in process
BENCH_ARGS=(--keys "$KEYS" --db "$DB_FILE")
if [[ $QUICK == 1 ]]; then
  say "in process, $KEYS keys (debug build, quick)"
  # The test profile: what the CI test step builds anyway. Also builds
  # target/debug/keyward (binaries are built for benches), used below.
  cargo test --workspace --all-features --bench listkeys -- --quick "${BENCH_ARGS[@]}" |
    tee "$WORK/inprocess.out"
  KEYWARD_BIN="${KEYWARD_BIN:-$ROOT/target/debug/keyward}"
else
  say "in process, $KEYS keys (cargo bench; slow to build the first time)"
  cargo bench --bench listkeys -- "${BENCH_ARGS[@]}" | tee "$WORK/inprocess.out"
fi
bench_build keyward
read -r DEPTH AFTER_ID < <(sed -n 's/^LISTKEYS depth=\([0-9]*\) after_id=\([^ ]*\) .*/\1 \2/p' "$WORK/inprocess.out")
[[ -n "${AFTER_ID:-}" ]] || die "the bench printed no LISTKEYS line"

# ------------------------------------------------------ 2. through the server
bench_tools
# The seeded organization holds more keys than keyward's default cap
# (--max-keys-per-organization, 100,000): raise it for bootstrap and serve.
export KEYWARD_MAX_KEYS_PER_ORGANIZATION=$((KEYS + 1000))
bench_keyward "sqlite://$DB_FILE?mode=rwc"

# ListKeysRequest { optional int32 limit = 1; string after_id = 2; } in a gRPC frame.
python3 - "$AFTER_ID" "$WORK" <<'PY'
import struct, sys
after, work = sys.argv[1].encode(), sys.argv[2]
frame = lambda m: b"\x00" + struct.pack(">I", len(m)) + m
limit = bytes([0x08, 100])
open(f"{work}/top.bin", "wb").write(frame(limit))
open(f"{work}/deep.bin", "wb").write(frame(limit + bytes([0x12, len(after)]) + after))
PY

URL="http://127.0.0.1:$KEYWARD_PORT/keyward.v1.KeyAdminService/ListKeys"
H2=(-c 1 -m 1 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $ADMIN")
# 100 keys of ~150 bytes each: a gRPC error would be a 200 with no body.
PAGE_BYTES=10000
UPTIME_BEFORE="$(uptime)"
for name in top deep; do
  bench_h2load "$name-warm" "$PAGE_BYTES" "${H2[@]}" -n 20 -d "$WORK/$name.bin" "$URL"
  bench_h2load "$name" "$PAGE_BYTES" "${H2[@]}" -n "$REQUESTS" -d "$WORK/$name.bin" \
    --log-file "$WORK/$name.tsv" "$URL"
done
UPTIME_AFTER="$(uptime)"
bench_alive keyward

bench_summary "$WORK" "$REQUESTS" "$KEYS" "$DEPTH" "$QUICK" <<'PY'
import sys
from h2load import latencies, pct, report
work, requests, keys, depth, quick = sys.argv[1:]
requests = int(requests)
print()
print(f"through the server (gRPC ListKeys, limit 100, h2load -c 1 -m 1, {requests} requests each):")
print("| depth | p50 ms | p99 ms | response bytes |")
print("|---:|---:|---:|---:|")
worst = 0
for text, name in [("0", "top"), (f"{int(depth):,}", "deep")]:
    lat = latencies(f"{work}/{name}.tsv")
    p50, p99 = pct(lat, 50) / 1000, pct(lat, 99) / 1000
    worst = max(worst, p50)
    print(f"| {text} | {p50:.3f} | {p99:.3f} | {report(f'{work}/{name}.out')['data'] / requests:,.0f} |")
verdict = "not judged (--quick)" if quick == "1" else ("met" if worst <= 10 else f"MISSED by {worst - 10:.3f} ms")
print(f"\nListKeys over {int(keys):,} keys, through the server: worst median {worst:.3f} ms (target <= 10 ms: {verdict})")
PY
echo
echo "load before: $UPTIME_BEFORE"
echo "load after:  $UPTIME_AFTER"
