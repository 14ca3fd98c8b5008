#!/usr/bin/env bash
# Instructions per call, counted by valgrind's callgrind (BENCHMARKS.md,
# "Issue 12"): unlike req/s on this shared machine, a count is the same run
# after run for the same binary and requests, so it shows what a change to
# the hot path saved, call by call, and where the rest goes.
#
#   bash scripts/bench-instructions.sh            # 3,000 calls per kind
#   bash scripts/bench-instructions.sh --quick    # 200 calls per kind (CI: the script works)
#
# Servers run under callgrind on a temporary SQLite database; h2load sends
# each kind of call (-c 4 -m 16, after 300 unmeasured calls of the same
# kind), and the counters are zeroed before and dumped after the measured
# calls, so start-up and other kinds are not counted:
#   keyward: grpc.health.v1.Health/Check; ValidateKey of a warm key (the
#       bench-load.sh request) with no policy, and with one rate limit; and
#       Envoy's Authorization/Check of the key with no policy (as
#       bench-auth.sh's Envoy setups send it) with a
#       CheckRequest shaped like Envoy's (peer address, method, path, host,
#       six headers)
#   benches/null-authz: the same Check (the null authorization server)
#   benches/null-service: the null handler (Health/Check) protected by
#       KeywardAuthLayer + RemoteValidator (warm verdict cache), and the same
#       binary without the layer. Under callgrind a call is ~50x slower, so
#       keyward's 750 ms cache hint lapses every few hundred calls and the
#       requests in flight then take the miss path (a ValidateKey to
#       keyward): the layer's warm cost is also given without them (the
#       inclusive count of the layer's miss future, from callgrind_annotate).
# It prints instructions per call and the ratios the issue-12 targets are
# about. Only user-space instructions count: the kernel's share of a call
# (its writev and reads) is not in them, and is the same for every kind.
# Each `<name>.cg` in the kept temporary directory (BENCH_KEEP=1) opens in
# callgrind_annotate (`--inclusive=yes --tree=calling`) for the breakdown.
#
# Settings (environment):
#   BENCH_CALLS=3000      measured calls per kind
#   KEYWARD_BIN=PATH      use this keyward (null-service and null-authz next
#                         to it); build nothing
#   BENCH_KEEP=1          keep the temporary directory (callgrind files, logs)
# (scripts/lib/bench.sh has the shared code and these settings' details.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh bench-instructions "$@"

CALLS="${BENCH_CALLS:-3000}"
WARMUP=300
if [[ $QUICK == 1 ]]; then
  CALLS=200
  WARMUP=50
fi
for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian package valgrind)"
done

bench_build auth
bench_tools

# callgrind NAME COMMAND...: server NAME under callgrind (bench_start), with
# RUST_LOG=warn (set outside valgrind: it does not follow an exec).
callgrind() {
  local name="$1"
  shift
  bench_start "$name" env RUST_LOG=warn valgrind --tool=callgrind \
    --callgrind-out-file="$WORK/$name.%p" "$@"
}
# wait_slow PORT NAME: bench_wait_port, several times over (valgrind starts slowly).
wait_slow() {
  local _
  for _ in 1 2 3 4; do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    bench_alive "$2"
    sleep 1
  done
  bench_wait_port "$@"
}

DB="sqlite://$WORK/keyward.db?mode=rwc"
bench_bootstrap "$DB"
KEYWARD_PORT="$(free_port)"
callgrind keyward "$KEYWARD" serve --database-url "$DB" --listen "127.0.0.1:$KEYWARD_PORT"
wait_slow "$KEYWARD_PORT" keyward
bench_create_key "instructions plain"
PLAIN_KEY="$KEY"
bench_create_key "instructions limited" \
  '"rate_limits": [{"name": "requests", "limit": 1000000000, "duration": "1s"}]'
LIMITED_KEY="$KEY"

NULL_PORT="$(free_port)"
callgrind null-authz "$NULL_AUTHZ" "127.0.0.1:$NULL_PORT"
# Under callgrind a first call runs code not yet translated, much slower
# than the layer's 2 s default timeout allows.
bench_start_null_services callgrind --keyward-timeout 30
wait_slow "$NULL_PORT" null-authz
wait_slow "$PROTECTED_PORT" null-protected
wait_slow "$UNPROTECTED_PORT" null-unprotected

# The request bodies as gRPC frames them (0x00, big-endian u32 length, message).
python3 - "$WORK" "$PLAIN_KEY" "$LIMITED_KEY" <<'PY'
import struct, sys
work, plain, limited = sys.argv[1:]
def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80]); n >>= 7
    return out + bytes([n])
def string(number, data):  # a length-delimited field
    data = data.encode() if isinstance(data, str) else data
    return varint(number << 3 | 2) + varint(len(data)) + data
def entry(number, key, value):  # one map<string, string> entry
    return string(number, string(1, key) + string(2, value))
frame = lambda message: b"\x00" + struct.pack(">I", len(message)) + message
validate = lambda key: (string(1, key) + string(2, "orders:read") + string(3, "203.0.113.7")
                        + string(4, "bench-client/1.0"))
# CheckRequest { attributes: AttributeContext { source: Peer { address:
# Address { socket_address: { address, port_value } } }, request: Request {
# http: HttpRequest { id, method, headers, path, host, scheme, protocol } } } }
socket = string(2, "203.0.113.7") + varint(3 << 3) + varint(51000)
peer = string(1, string(1, socket))
headers = b"".join(entry(3, k, v) for k, v in [
    (":authority", "shop.example"), (":method", "GET"), (":path", "/orders/1"),
    ("authorization", f"Bearer {plain}"), ("user-agent", "bench-client/1.0"),
    ("x-request-id", "5f0c7a56-3c2b-4d7e-9a41-0d9e8b1c2f3a")])
http = (string(1, "10530546455224405537") + string(2, "GET") + headers + string(4, "/orders/1")
        + string(5, "shop.example") + string(6, "http") + string(10, "HTTP/2"))
check = string(1, string(1, peer) + string(4, string(2, http)))
for name, message in [("health", b""), ("validate", validate(plain)), ("limited", validate(limited)),
                      ("check", check)]:
    open(f"{work}/{name}.bin", "wb").write(frame(message))
PY

GRPC=(-H 'content-type: application/grpc' -H 'te: trailers')
# measure NAME SERVER MIN-BYTES URL [h2load args]: warm-up, zero, the calls, dump.
measure() {
  local name="$1" server="$2" min="$3" url="$4"
  shift 4
  bench_h2load "$name-warmup" "$min" -n "$WARMUP" -c 4 -m 16 "${GRPC[@]}" "$@" "$url"
  callgrind_control -z "${PID_OF[$server]}" >/dev/null 2>&1
  bench_h2load "$name" "$min" -n "$CALLS" -c 4 -m 16 "${GRPC[@]}" "$@" "$url"
  callgrind_control -d "$name" "${PID_OF[$server]}" >/dev/null 2>&1
  # The dump just written: callgrind numbers a process's dumps 1, 2, ...
  local dumps=("$WORK/$server".*.*)
  mv "${dumps[-1]}" "$WORK/$name.cg"
  callgrind_annotate "$WORK/$name.cg" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' \
    >"$WORK/$name.ir"
  say "$name: $(($(cat "$WORK/$name.ir") / CALLS)) instructions per call"
}
K="http://127.0.0.1:$KEYWARD_PORT"
# A VALID answer describes the key (> 60 bytes); a Check's OK carries headers.
measure health keyward 2 "$K/grpc.health.v1.Health/Check" -d "$WORK/health.bin"
measure validate keyward 60 "$K/keyward.v1.KeyValidationService/ValidateKey" -d "$WORK/validate.bin"
measure limited keyward 60 "$K/keyward.v1.KeyValidationService/ValidateKey" -d "$WORK/limited.bin"
measure check-keyward keyward 60 "$K/envoy.service.auth.v3.Authorization/Check" -d "$WORK/check.bin"
measure check-null null-authz 60 "http://127.0.0.1:$NULL_PORT/envoy.service.auth.v3.Authorization/Check" \
  -d "$WORK/check.bin"
AUTH=(-H "authorization: Bearer $PLAIN_KEY" -d "$WORK/health.bin")
measure null-protected null-protected "$NULL_CHECK_BYTES" "http://127.0.0.1:$PROTECTED_PORT$NULL_CHECK" "${AUTH[@]}"
measure null-unprotected null-unprotected "$NULL_CHECK_BYTES" "http://127.0.0.1:$UNPROTECTED_PORT$NULL_CHECK" "${AUTH[@]}"
# The protected calls that missed the verdict cache: the layer's miss future
# (`KeywardAuth::call`'s async block), inclusive, less the inner service's
# work it drove (the null handler, which the unprotected calls do too).
callgrind_annotate --inclusive=yes --tree=calling --threshold=100 "$WORK/null-protected.cg" |
  python3 -c '
import re, sys
miss, inner, block = 0, 0, False
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \([^)]*\)\s+([*>]|<)\s+(.*)", line)
    if not m:
        block = False if not line.strip() else block
        continue
    count, mark, name = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
    if mark == "*":
        block = re.search(r"KeywardAuth<S,V> as tower_service::Service<.*>>::call::\{\{closure\}\}", name) is not None
        miss += count if block else 0
    elif mark == ">" and block and re.search(r"router::Routes(Future)? as ", name):
        inner += count
print(miss - inner)' >"$WORK/null-protected-misses.ir"
for name in keyward null-authz null-protected null-unprotected; do bench_alive "$name"; done

bench_summary "$WORK" "$CALLS" "$QUICK" <<'PY'
import sys
work, calls, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
ir = {name: int(open(f"{work}/{name}.ir").read()) / calls for name in
      ["health", "validate", "limited", "check-keyward", "check-null", "null-protected", "null-unprotected",
       "null-protected-misses"]}
print()
if quick:
    print(f"QUICK run ({calls} calls per kind): counts include more warm-up noise")
print(f"user-space instructions per call (callgrind, {calls:,} calls per kind, h2load -c 4 -m 16):")
print("| call | instructions |\n|---|---:|")
labels = {"health": "keyward `Health/Check`", "validate": "keyward `ValidateKey`, key without policy",
          "limited": "keyward `ValidateKey`, key with one rate limit",
          "check-keyward": "keyward `Authorization/Check` (key without policy)",
          "check-null": "null-authz `Authorization/Check`",
          "null-protected": "null-service `Health/Check`, protected (layer + remote validator)",
          "null-protected-misses": "… of which verdict-cache misses (per call, averaged)",
          "null-unprotected": "null-service `Health/Check`, no layer"}
for name, label in labels.items():
    print(f"| {label} | {ir[name]:,.0f} |")
print()
print(f"Health / ValidateKey (rate-limited key): {ir['health'] / ir['limited']:.3f}; "
      f"Health / ValidateKey (no policy): {ir['health'] / ir['validate']:.3f}")
print(f"keyward Check / null Check: {ir['check-keyward'] / ir['check-null']:.3f}")
layer = ir["null-protected"] - ir["null-unprotected"]
warm = layer - ir["null-protected-misses"]
print(f"the layer: +{layer:,.0f} instructions per call of the null handler "
      f"({layer / ir['null-unprotected'] * 100:.1f} % of the unprotected call's); "
      f"warm, without the misses: +{warm:,.0f} ({warm / ir['null-unprotected'] * 100:.1f} %)")
PY
