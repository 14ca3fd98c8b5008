#!/usr/bin/env bash
# ValidateKey vs grpc.health.v1.Health/Check on the same running keyward, and
# ValidateKey over TLS vs plaintext, at the same concurrency, from a separate
# process (h2load), on loopback only. Targets (BENCHMARKS.md), each judged on
# the median of the per-round ratios:
#   ValidateKey of a rate-limited key >= 95% of Health/Check throughput
#       (issue 12 item 1); the unlimited key's ratio is printed too, for
#       information (its former target, >= 90%, alongside)
#   ValidateKey of a rate-limited key, under its limit, >= 95% of an
#       unlimited key's
#   ValidateKey over TLS on reused connections >= 90% of plaintext (the
#       rate-limited key both ways)
#
#   bash scripts/bench-load.sh            # full run, prints the table and the ratios
#   bash scripts/bench-load.sh --quick    # smoke run (CI): a few hundred requests, nothing judged
#
# It builds keyward in release (target/ is reused; --quick uses the debug
# binary), installs the tools (scripts/install-tools.sh: h2load, grpcurl),
# starts keyward on a temporary SQLite database on a free 127.0.0.1 port,
# bootstraps an admin key, creates two standard keys with CreateKey, then
# generates a throwaway self-signed certificate and P-256 key for 127.0.0.1
# with openssl (valid one day, in the temporary directory, so gone on exit
# unless BENCH_KEEP=1) and starts a second keyward on the same SQLite file
# serving TLS 1.3 (--tls-cert/--tls-key) on another free port. grpcurl checks
# that every call answers (over TLS too, verifying the certificate), then
# h2load runs against
#   /keyward.v1.KeyValidationService/ValidateKey  (key + one required scope +
#       client IP + user agent: a warm-cache VALID verdict)   [validate]
#   the same ValidateKey for a second key with one rate limit (10^9 per
#       second: never reached, so every call is charged and VALID)  [limited]
#   that same rate-limited request over https:// to the TLS keyward (h2 by
#       ALPN; h2load does not verify the certificate)   [tls]
#   /grpc.health.v1.Health/Check                  (empty request)  [health]
# with identical flags, in rounds of one run each, in the order H L T V,
# then V T L H, and so on alternating: each judged pair (limited and health;
# TLS and limited) always runs back to back, each side of it first in every
# other round, so a shared machine's slow spells, which last seconds to
# minutes, hit both sides of a ratio alike. h2load opens its -c connections once and sends every request of a
# run on them, so the TLS figure is TLS on reused connections: one handshake
# per connection per run (outside the measured time in a full run, which
# starts after --warm-up-time), then record encryption of each request and
# response. Only one keyward is loaded at a time; the other idles (its change
# feed reads and usage flushes go on, as they do for the loaded one).
# Requests/s come from h2load's own report; p50/p99 from its per-request log
# (--log-file). Each ratio is reported two ways: mean req/s over mean req/s,
# and the median of the per-round ratios (a round's runs are close in time,
# so a shared machine's slow spells cancel out). Every process it starts is
# stopped on exit.
#
# With 2+ CPUs both keywards are pinned to CPU 0 and h2load to CPU 1, so the
# load generator never competes with the server it measures; BENCH_PIN=0
# turns that off.
#
# Settings (environment):
#   BENCH_DURATION=8             measured seconds per run (h2load -D)
#   BENCH_WARMUP=2               warm-up seconds before each (h2load --warm-up-time)
#   BENCH_LOAD="-c 4 -m 16"      h2load clients / streams per client (every run)
#   BENCH_ROUNDS=8               rounds (each runs all four once)
#   BENCH_PIN=1|0                pin server / load generator (default: 1 with 2+ CPUs)
#   KEYWARD_BIN=PATH             use this keyward binary, build nothing
#   BENCH_KEEP=1                 keep the temporary directory (logs, h2load logs)
# (scripts/lib/bench.sh has the shared code and these settings' details.)
# It exits non-zero when any step fails or any request does not succeed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh bench-load "$@"

DURATION="${BENCH_DURATION:-8}"
WARMUP="${BENCH_WARMUP:-2}"
LOAD="${BENCH_LOAD:--c 4 -m 16}"
ROUNDS="${BENCH_ROUNDS:-8}"
if [[ $QUICK == 1 ]]; then
  LOAD="${BENCH_LOAD:--c 2 -m 4}"
  ROUNDS=1
fi

bench_build keyward
bench_tools
bench_keyward "sqlite://$WORK/keyward.db?mode=rwc"
PORT="$KEYWARD_PORT"
bench_create_key "bench load client"
UNLIMITED_KEY="$KEY"
bench_create_key "bench load limited" \
  '"rate_limits": [{"name": "requests", "limit": 1000000000, "duration": "1s"}]'
LIMITED_KEY="$KEY"
KEY="$UNLIMITED_KEY"
say "keyward $KEYWARD on 127.0.0.1:$PORT, standard keys ${KEY:0:12}… and ${LIMITED_KEY:0:12}… (rate-limited)"

# A second keyward on the same database, serving TLS with a throwaway
# self-signed certificate for 127.0.0.1 (its key stays in $WORK).
command -v openssl >/dev/null || die "openssl missing (needed for the TLS runs)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost -days 1 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" >"$WORK/openssl.log" 2>&1 ||
  { cat "$WORK/openssl.log" >&2; die "openssl could not make a certificate"; }
bench_serve keyward-tls "sqlite://$WORK/keyward.db?mode=rwc" \
  --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key"
TLS_PORT="${PORT_OF[keyward-tls]}"
say "keyward over TLS on 127.0.0.1:$TLS_PORT (same database)"

# The two request bodies as gRPC frames them: 0x00 (not compressed),
# big-endian u32 length, then the protobuf message.
python3 - "$KEY" "$LIMITED_KEY" "$WORK" <<'PY'
import struct, sys
key, limited, work = sys.argv[1], sys.argv[2], sys.argv[3]
def field(number, text):  # a string field (wire type 2); every value here is < 128 bytes
    data = text.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data
# ValidateKeyRequest { key = 1; required_scopes = 2; client_ip = 3; user_agent = 4 }
request = lambda key: field(1, key) + field(2, "orders:read") + field(3, "203.0.113.7") + field(4, "bench-client/1.0")
frame = lambda message: b"\x00" + struct.pack(">I", len(message)) + message
open(f"{work}/validate.bin", "wb").write(frame(request(key)))
open(f"{work}/limited.bin", "wb").write(frame(request(limited)))
# HealthCheckRequest { service = 1 } empty: the server's overall status.
open(f"{work}/health.bin", "wb").write(frame(b""))
PY

VALIDATE_URL="http://127.0.0.1:$PORT/keyward.v1.KeyValidationService/ValidateKey"
TLS_URL="https://127.0.0.1:$TLS_PORT/keyward.v1.KeyValidationService/ValidateKey"
HEALTH_URL="http://127.0.0.1:$PORT/grpc.health.v1.Health/Check"
GRPC=(-H 'content-type: application/grpc' -H 'te: trailers')

# The same calls through grpcurl: the key is VALID, the server SERVING.
answer="$("$GRPCURL" -plaintext -d "{\"key\": \"$KEY\", \"required_scopes\": [\"orders:read\"]}" \
  "127.0.0.1:$PORT" keyward.v1.KeyValidationService/ValidateKey)"
[[ "$answer" == *'"code": "VALIDATION_CODE_VALID"'* ]] || die "ValidateKey did not answer VALID: $answer"
answer="$("$GRPCURL" -plaintext -d "{\"key\": \"$LIMITED_KEY\", \"required_scopes\": [\"orders:read\"]}" \
  "127.0.0.1:$PORT" keyward.v1.KeyValidationService/ValidateKey)"
[[ "$answer" == *'"code": "VALIDATION_CODE_VALID"'* && "$answer" == *'"metered": true'* ]] ||
  die "ValidateKey of the rate-limited key did not answer a metered VALID: $answer"
answer="$("$GRPCURL" -plaintext "127.0.0.1:$PORT" grpc.health.v1.Health/Check)"
[[ "$answer" == *'"status": "SERVING"'* ]] || die "Health/Check did not answer SERVING: $answer"
answer="$("$GRPCURL" -cacert "$WORK/tls.crt" -d "{\"key\": \"$LIMITED_KEY\", \"required_scopes\": [\"orders:read\"]}" \
  "127.0.0.1:$TLS_PORT" keyward.v1.KeyValidationService/ValidateKey)"
[[ "$answer" == *'"code": "VALIDATION_CODE_VALID"'* && "$answer" == *'"metered": true'* ]] ||
  die "ValidateKey of the rate-limited key over TLS did not answer a metered VALID: $answer"

# A VALID ValidateKeyResponse carries the key's id, organization, name and
# scopes (> 60 bytes); a HealthCheckResponse { status = SERVING } is 2 bytes
# (a gRPC error is a 200 with no body). Probes first: 20 requests each.
# A rate-limited VALID also names its limit (> 60 bytes); a RATE_LIMITED
# answer describes no key and is shorter, failing the run.
# The TLS probe must have negotiated TLS 1.3 and h2 (ALPN).
declare -A MIN_BYTES=([validate]=60 [limited]=60 [tls]=60 [health]=2)
declare -A URL=([validate]="$VALIDATE_URL" [limited]="$VALIDATE_URL" [tls]="$TLS_URL" [health]="$HEALTH_URL")
declare -A BODY=([validate]=validate [limited]=limited [tls]=limited [health]=health)
KINDS=(health limited tls validate)
for what in "${KINDS[@]}"; do
  bench_h2load "$what-check" "${MIN_BYTES[$what]}" -n 20 -c 1 "${GRPC[@]}" -d "$WORK/${BODY[$what]}.bin" "${URL[$what]}"
done
if ! grep -q '^TLS Protocol: TLSv1.3' "$WORK/tls-check.out" ||
  ! grep -q '^Application protocol: h2$' "$WORK/tls-check.out"; then
  cat "$WORK/tls-check.out" >&2
  die "h2load did not negotiate TLS 1.3 and h2 with the TLS keyward"
fi

if [[ $QUICK == 1 ]]; then
  BOUND=(-n 400)
  say "quick: h2load $LOAD -n 400 per endpoint (figures not judged)"
else
  BOUND=(-D "$DURATION" --warm-up-time "$WARMUP")
  say "h2load $LOAD -t 1, ${WARMUP}s warm-up + ${DURATION}s, $ROUNDS round(s); pinning: $BENCH_PIN"
fi
UPTIME_BEFORE="$(uptime)"
NAMES=()
for round in $(seq "$ROUNDS"); do
  order=()
  for i in "${!KINDS[@]}"; do
    if ((round % 2 == 1)); then
      order+=("${KINDS[i]}")
    else
      order=("${KINDS[i]}" "${order[@]}")
    fi
  done
  for what in "${order[@]}"; do
    # shellcheck disable=SC2086 # LOAD is a list of h2load flags
    bench_h2load "$what-$round" "${MIN_BYTES[$what]}" $LOAD -t 1 "${BOUND[@]}" \
      --log-file "$WORK/$what-$round.tsv" "${GRPC[@]}" -d "$WORK/${BODY[$what]}.bin" "${URL[$what]}"
    grep -E '^(finished in|requests:)' "$WORK/$what-$round.out" | sed "s/^/  $what-$round: /" >&2
    NAMES+=("$what-$round")
  done
done
UPTIME_AFTER="$(uptime)"
bench_alive keyward
bench_alive keyward-tls

# ------------------------------------------------------------- summary
bench_summary "$WORK" "$QUICK" "$LOAD" "$DURATION" "$WARMUP" "$BENCH_PIN" "${NAMES[@]}" <<'PY'
import sys
from h2load import latencies, median, pct, report
work, quick, load, duration, warmup, pin, *names = sys.argv[1:]
quick = quick == "1"

runs = {name: dict(rps=report(f"{work}/{name}.out")["rps"], lat=latencies(f"{work}/{name}.tsv"))
        for name in names}

def pooled(kind):
    rs = [r for n, r in runs.items() if n.startswith(kind + "-")]
    lat = [x for r in rs for x in r["lat"]]
    return dict(rps=sum(r["rps"] for r in rs) / len(rs), n=len(lat),
                p50=pct(lat, 50) / 1000, p99=pct(lat, 99) / 1000, each=[r["rps"] for r in rs])

h, v, l, t = pooled("health"), pooled("validate"), pooled("limited"), pooled("tls")
n_rounds = len(h["each"])
per_round = lambda a, b: [runs[f"{a}-{i}"]["rps"] / runs[f"{b}-{i}"]["rps"] for i in range(1, n_rounds + 1)]
print()
if quick:
    print(f"QUICK smoke run (h2load {load} -t 1 -n 400 per endpoint): figures are not meaningful")
else:
    print(f"h2load {load} -t 1, -D {duration} --warm-up-time {warmup}, {len(h['each'])} run(s) per endpoint; "
          f"pinning: {'both keywards on CPU 0, h2load on CPU 1' if pin == '1' else 'off'}")
print()
print("| call | req/s | p50 ms | p99 ms | requests | req/s per run |")
print("|---|---:|---:|---:|---:|---|")
for label, x in [("grpc.health.v1.Health/Check", h), ("keyward.v1.KeyValidationService/ValidateKey", v),
                 ("ValidateKey, key with one rate limit", l),
                 ("ValidateKey over TLS (reused connections), key with one rate limit", t)]:
    each = ", ".join(f"{r:,.0f}" for r in x["each"])
    print(f"| {label} | {x['rps']:,.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['n']:,} | {each} |")
print()

def line(label, rounds, mean_ratio, target, informational=False):
    m = median(rounds)
    verdict = ("not judged (--quick)" if quick else
               "met" if m >= target else f"MISSED by {(target - m) * 100:.1f} points")
    what = f"informational; target >= {target}" if informational else f"target >= {target}"
    print(f"ratio {label}: median of rounds {m:.3f} ({what}: {verdict}); "
          f"mean over mean {mean_ratio:.3f}; rounds {', '.join(f'{r:.3f}' for r in sorted(rounds))}")

line("ValidateKey (rate-limited key)/Health throughput", per_round("limited", "health"), l["rps"] / h["rps"], 0.95)
line("ValidateKey (unlimited key)/Health throughput", per_round("validate", "health"), v["rps"] / h["rps"], 0.9,
     informational=True)
line("rate-limited/unlimited ValidateKey throughput", per_round("limited", "validate"), l["rps"] / v["rps"], 0.95)
line("TLS/plaintext ValidateKey throughput (rate-limited key)", per_round("tls", "limited"), t["rps"] / l["rps"], 0.9)
PY
echo
echo "load before: $UPTIME_BEFORE"
echo "load after:  $UPTIME_AFTER"
