#!/usr/bin/env bash
# ValidateKey vs grpc.health.v1.Health/Check on the same running keyward, at
# the same concurrency, from a separate process (h2load), on loopback only
# (target: ValidateKey >= 90% of Health/Check throughput; BENCHMARKS.md):
#
#   bash scripts/bench-load.sh            # full run, prints the table and the ratio
#   bash scripts/bench-load.sh --quick    # smoke run (CI): a few hundred requests, nothing judged
#
# It builds keyward in release (target/ is reused; --quick uses the debug
# binary), installs the tools (scripts/install-tools.sh: h2load, grpcurl),
# starts keyward on a temporary SQLite database on a free 127.0.0.1 port,
# bootstraps an admin key, creates a standard key with CreateKey, checks both
# calls answer, then runs h2load against
#   /keyward.v1.KeyValidationService/ValidateKey  (key + one required scope +
#       client IP + user agent: a warm-cache VALID verdict)
#   /grpc.health.v1.Health/Check                  (empty request)
# with identical flags, in rounds of one run each, alternating the order
# round by round (H V, V H, ...) so that drift hits both alike. Requests/s
# come from h2load's own report; p50/p99 from its per-request log
# (--log-file). The ratio is reported two ways: mean ValidateKey req/s over
# mean Health req/s, and the median of the per-round ratios (each round's two
# runs are adjacent in time, so a shared machine's slow spells cancel out).
# Every process it starts is stopped on exit.
#
# With 2+ CPUs keyward is pinned to CPU 0 and h2load to CPU 1, so the load
# generator never competes with the server it measures; BENCH_PIN=0 turns
# that off.
#
# Settings (environment):
#   BENCH_DURATION=8             measured seconds per run (h2load -D)
#   BENCH_WARMUP=2               warm-up seconds before each (h2load --warm-up-time)
#   BENCH_LOAD="-c 4 -m 16"      h2load clients / streams per client (both endpoints)
#   BENCH_ROUNDS=8               rounds (each runs both endpoints once)
#   BENCH_PIN=1|0                pin server / load generator (default: 1 with 2+ CPUs)
#   KEYWARD_BIN=PATH             use this keyward binary, build nothing
#   BENCH_KEEP=1                 keep the temporary directory (logs, h2load logs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "bench-load: unknown argument $arg" >&2; exit 2 ;;
  esac
done

DURATION="${BENCH_DURATION:-8}"
WARMUP="${BENCH_WARMUP:-2}"
LOAD="${BENCH_LOAD:--c 4 -m 16}"
ROUNDS="${BENCH_ROUNDS:-8}"
if [[ $QUICK == 1 ]]; then
  LOAD="${BENCH_LOAD:--c 2 -m 4}"
  ROUNDS=1
fi
if [[ -z "${BENCH_PIN:-}" ]]; then
  if [[ "$(nproc)" -ge 2 ]] && command -v taskset >/dev/null 2>&1; then BENCH_PIN=1; else BENCH_PIN=0; fi
fi

say() { printf '[bench-load] %s\n' "$*" >&2; }
die() { printf '[bench-load] error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ build
if [[ -n "${KEYWARD_BIN:-}" ]]; then
  KEYWARD="$KEYWARD_BIN"
elif [[ $QUICK == 1 ]]; then
  say "building keyward (debug)"
  cargo build --bin keyward >&2
  KEYWARD="$ROOT/target/debug/keyward"
else
  say "building keyward (release; slow the first time)"
  cargo build --release -p keyward --bin keyward >&2
  KEYWARD="$ROOT/target/release/keyward"
fi
[[ -x "$KEYWARD" ]] || die "$KEYWARD missing"

bash scripts/install-tools.sh >&2
# shellcheck source=scripts/env.sh
source scripts/env.sh
GRPCURL="${KEYWARD_GRPCURL_BIN:-$(command -v grpcurl)}"
command -v h2load >/dev/null || die "h2load missing"

# ------------------------------------------------------- processes, cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench-load.XXXXXX")"
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

SERVER_CPU=()
LOAD_CPU=()
if [[ "$BENCH_PIN" == 1 ]]; then
  SERVER_CPU=(taskset -c 0)
  LOAD_CPU=(taskset -c 1)
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
DB="sqlite://$WORK/keyward.db?mode=rwc"
ADMIN="$("$KEYWARD" bootstrap --database-url "$DB" --organization bench 2>"$WORK/bootstrap.log")" ||
  { cat "$WORK/bootstrap.log" >&2; die "bootstrap failed"; }
RUST_LOG=warn "${SERVER_CPU[@]}" "$KEYWARD" serve --database-url "$DB" --listen "127.0.0.1:$PORT" \
  >"$WORK/keyward.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/keyward.log" >&2; die "keyward exited"; }
  sleep 0.1
done
KEY="$("$GRPCURL" -plaintext -H "authorization: Bearer $ADMIN" \
  -d '{"name": "bench load client", "scopes": ["orders:read", "orders:write"]}' \
  "127.0.0.1:$PORT" keyward.v1.KeyAdminService/CreateKey |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')"
[[ "$KEY" == sk_live_* ]] || die "CreateKey returned no standard key"
say "keyward $KEYWARD on 127.0.0.1:$PORT (pid $SERVER_PID), standard key ${KEY:0:12}…"

# The two request bodies as gRPC frames them: 0x00 (not compressed),
# big-endian u32 length, then the protobuf message.
python3 - "$KEY" "$WORK" <<'PY'
import struct, sys
key, work = sys.argv[1], sys.argv[2]
def field(number, text):  # a string field (wire type 2); every value here is < 128 bytes
    data = text.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data
# ValidateKeyRequest { key = 1; required_scopes = 2; client_ip = 3; user_agent = 4 }
validate = field(1, key) + field(2, "orders:read") + field(3, "203.0.113.7") + field(4, "bench-client/1.0")
frame = lambda message: b"\x00" + struct.pack(">I", len(message)) + message
open(f"{work}/validate.bin", "wb").write(frame(validate))
# HealthCheckRequest { service = 1 } empty: the server's overall status.
open(f"{work}/health.bin", "wb").write(frame(b""))
PY

VALIDATE_URL="http://127.0.0.1:$PORT/keyward.v1.KeyValidationService/ValidateKey"
HEALTH_URL="http://127.0.0.1:$PORT/grpc.health.v1.Health/Check"
GRPC=(-H 'content-type: application/grpc' -H 'te: trailers')

# The same calls through grpcurl: the key is VALID, the server SERVING.
"$GRPCURL" -plaintext -d "{\"key\": \"$KEY\", \"required_scopes\": [\"orders:read\"]}" \
  "127.0.0.1:$PORT" keyward.v1.KeyValidationService/ValidateKey | grep -q '"code": "VALIDATION_CODE_VALID"' ||
  die "ValidateKey did not answer VALID"
"$GRPCURL" -plaintext "127.0.0.1:$PORT" grpc.health.v1.Health/Check | grep -q '"status": "SERVING"' ||
  die "Health/Check did not answer SERVING"

# check NAME URL BODY MIN-BYTES: 20 h2load requests all succeed with at least
# MIN-BYTES of response body each (a gRPC error is a 200 with no body).
check() {
  h2load -n 20 -c 1 "${GRPC[@]}" -d "$3" "$2" >"$WORK/$1-check.out" 2>&1 || true
  python3 - "$WORK/$1-check.out" "$4" <<'PY' || { cat "$WORK/$1-check.out" >&2; die "$1: the probe requests failed"; }
import re, sys
out = open(sys.argv[1]).read()
ok = re.search(r"requests: 20 total, 20 started, 20 done, 20 succeeded, 0 failed, 0 errored", out)
data = re.search(r"traffic: .*\((\d+)\) data", out)
sys.exit(0 if ok and data and int(data.group(1)) >= 20 * int(sys.argv[2]) else 1)
PY
}
# A VALID ValidateKeyResponse carries the key's id, organization, name and
# scopes (> 60 bytes); a HealthCheckResponse { status = SERVING } is 2 bytes.
check validate "$VALIDATE_URL" "$WORK/validate.bin" 60
check health "$HEALTH_URL" "$WORK/health.bin" 2

# run NAME URL BODY: one h2load run; NAME.out (report), NAME.tsv (per-request log)
run() {
  local name="$1" url="$2" body="$3" bound
  if [[ $QUICK == 1 ]]; then
    bound=(-n 400)
  else
    bound=(-D "$DURATION" --warm-up-time "$WARMUP")
  fi
  # shellcheck disable=SC2086 # LOAD is a list of h2load flags
  "${LOAD_CPU[@]}" h2load $LOAD -t 1 "${bound[@]}" --log-file "$WORK/$name.tsv" \
    "${GRPC[@]}" -d "$body" "$url" >"$WORK/$name.out" 2>&1 ||
    { cat "$WORK/$name.out" >&2; die "h2load $name failed"; }
  grep -E '^(finished in|requests:)' "$WORK/$name.out" | sed "s/^/  $name: /" >&2
}

if [[ $QUICK == 1 ]]; then
  say "quick: h2load $LOAD -n 400 per endpoint (figures not judged)"
else
  say "h2load $LOAD -t 1, ${WARMUP}s warm-up + ${DURATION}s, $ROUNDS round(s); pinning: $BENCH_PIN"
fi
UPTIME_BEFORE="$(uptime)"
NAMES=()
for round in $(seq "$ROUNDS"); do
  if ((round % 2 == 1)); then order=(health validate); else order=(validate health); fi
  for what in "${order[@]}"; do
    if [[ $what == health ]]; then
      run "health-$round" "$HEALTH_URL" "$WORK/health.bin"
    else
      run "validate-$round" "$VALIDATE_URL" "$WORK/validate.bin"
    fi
    NAMES+=("$what-$round")
  done
done
UPTIME_AFTER="$(uptime)"
kill -0 "$SERVER_PID" 2>/dev/null || die "keyward died during the runs"

# ------------------------------------------------------------- summary
python3 - "$WORK" "$QUICK" "$LOAD" "$DURATION" "$WARMUP" "$BENCH_PIN" "${NAMES[@]}" <<'PY'
import re, sys
work, quick, load, duration, warmup, pin, *names = sys.argv[1:]
quick = quick == "1"

def parse(name):
    out = open(f"{work}/{name}.out").read()
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    total, done, ok, failed, errored = map(int, m.groups())
    # --log-file: start time (µs since run start), status, latency (µs)
    lat = [int(line.split("\t")[2]) for line in open(f"{work}/{name}.tsv") if line.strip()]
    return dict(rps=rps, ok=ok, bad=failed + errored + (done - ok), lat=lat)

runs = {name: parse(name) for name in names}
def pct(lat, p):
    lat = sorted(lat)
    return lat[min(len(lat) - 1, max(0, -(-len(lat) * p // 100) - 1))] / 1000  # nearest rank, ms

def pooled(kind):
    rs = [r for n, r in runs.items() if n.startswith(kind + "-")]
    lat = [x for r in rs for x in r["lat"]]
    return dict(rps=sum(r["rps"] for r in rs) / len(rs), n=len(lat), bad=sum(r["bad"] for r in rs),
                p50=pct(lat, 50), p99=pct(lat, 99), each=[r["rps"] for r in rs])

h, v = pooled("health"), pooled("validate")
ratio = v["rps"] / h["rps"]
rounds = sorted(runs[f"validate-{i}"]["rps"] / runs[f"health-{i}"]["rps"]
                for i in range(1, len(h["each"]) + 1))
median = rounds[len(rounds) // 2] if len(rounds) % 2 else (rounds[len(rounds) // 2 - 1] + rounds[len(rounds) // 2]) / 2
print()
if quick:
    print(f"QUICK smoke run (h2load {load} -t 1 -n 400 per endpoint): figures are not meaningful")
else:
    print(f"h2load {load} -t 1, -D {duration} --warm-up-time {warmup}, {len(h['each'])} run(s) per endpoint; "
          f"pinning: {'keyward on CPU 0, h2load on CPU 1' if pin == '1' else 'off'}")
print()
print("| call | req/s | p50 ms | p99 ms | requests | failed | req/s per run |")
print("|---|---:|---:|---:|---:|---:|---|")
for label, x in [("grpc.health.v1.Health/Check", h), ("keyward.v1.KeyValidationService/ValidateKey", v)]:
    each = ", ".join(f"{r:,.0f}" for r in x["each"])
    print(f"| {label} | {x['rps']:,.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['n']:,} | {x['bad']} | {each} |")
print()
verdict = "not judged (--quick)" if quick else ("met" if median >= 0.9 else f"MISSED by {(0.9 - median) * 100:.1f} points")
print(f"ratio ValidateKey/Health throughput: median of rounds {median:.3f} (target >= 0.9: {verdict}); "
      f"mean over mean {ratio:.3f}; rounds {', '.join(f'{r:.3f}' for r in rounds)}")
if h["bad"] or v["bad"]:
    sys.exit("some requests failed")
PY
echo
echo "load before: $UPTIME_BEFORE"
echo "load after:  $UPTIME_AFTER"
