#!/usr/bin/env bash
# Measures what keyward's protection costs a service (BENCHMARKS.md, "Auth
# overhead"), with h2load, on loopback only:
#
#   bash scripts/bench-auth.sh            # full run, prints the tables
#   bash scripts/bench-auth.sh --quick    # smoke run (CI): debug binaries, 1 s loads, nothing judged
#
# 1. orders-service (examples/) protected by KeywardAuthLayer + RemoteValidator
#    (warm verdict cache: keyward's 750 ms hint, so about one ValidateKey a
#    second) vs the same binary with --no-auth; unary GetOrder, saturating
#    load, in alternating rounds (BENCH_ROUNDS).
# 2. Envoy (--concurrency 1) in front of a trivial HTTP/1.1 upstream
#    (examples/bench_upstream.rs), four setups of deploy/envoy/envoy.yaml
#    (ports rewritten) in alternating rounds: no auth; Envoy's native static
#    `api_key_auth` filter; ext_authz to a null authorization server
#    (benches/null-authz: allows everything, same response shape as keyward);
#    ext_authz to keyward. Throughput, latency, and the CPU per request of
#    Envoy and of the authorization server separately; judged: keyward >= 0.9x
#    the null server's throughput, keyward's CPU per Check <= 1.2x the null
#    server's.
#
# It builds the release binaries (slow the first time; target/ is reused),
# installs the tools (scripts/install-tools.sh: h2load, envoy, grpcurl), starts
# keyward on a temporary SQLite database, makes the keys, runs the four loads
# and prints a summary table: req/s, p50/p99 from h2load's per-request log, and
# the CPU time the servers used per request (from /proc). The load takes about
# two minutes; every process the script starts is stopped on exit.
# With 2+ CPUs the servers (keyward, orders-service, Envoy, upstream) share
# CPU 0 and h2load gets CPU 1, so the load generator does not compete with what
# it measures; BENCH_PIN=0 turns that off. Other load on the machine skews the
# figures: run it on an otherwise idle machine (it prints the load average and
# CPU pressure before and after, to tell).
#
# Settings (environment):
#   BENCH_DURATION=5         measured seconds per run (h2load -D)
#   BENCH_WARMUP=2           seconds of an unmeasured warm-up run before each
#   BENCH_ROUNDS=6           part 1 rounds (one protected and one unprotected
#                            run each, order alternating); the loss is the
#                            median of the rounds' losses
#   BENCH_GRPC_LOAD="-c 8 -m 16"   h2load clients/streams for part 1
#   BENCH_ENVOY_LOAD="-c 8 -m 8"   h2load clients/streams for part 2
#   BENCH_PIN=1|0            pin servers / load generator to CPUs (default: 1 with 2+ CPUs)
#   KEYWARD_BIN=PATH         use the binaries already built: keyward at PATH,
#                            orders-service and examples/bench_upstream next
#                            to it; build nothing
#   BENCH_KEEP=1             keep the temporary directory (logs, configs, h2load logs)
# (scripts/lib/bench.sh has the shared code and these settings' details.)
# It exits non-zero when any step fails or any request does not succeed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh bench-auth "$@"

DURATION="${BENCH_DURATION:-5}"
WARMUP="${BENCH_WARMUP:-2}"
ROUNDS="${BENCH_ROUNDS:-6}"
GRPC_LOAD="${BENCH_GRPC_LOAD:--c 8 -m 16}"
ENVOY_LOAD="${BENCH_ENVOY_LOAD:--c 8 -m 8}"
if [[ $QUICK == 1 ]]; then
  DURATION=1
  WARMUP=1
  ROUNDS=1
  GRPC_LOAD="-c 2 -m 4"
  ENVOY_LOAD="-c 2 -m 2"
fi

bench_build orders
bench_tools

# cpu_ticks NAME...: user + system CPU time so far of those servers, in ticks
cpu_ticks() {
  local name total=0 stat
  for name in "$@"; do
    read -ra stat <"/proc/${PID_OF[$name]}/stat"
    # Fields 14 and 15 (utime, stime); the command name (field 2) has no spaces here.
    total=$((total + stat[13] + stat[14]))
  done
  echo "$total"
}

# -------------------------------------------------------------- keyward
bench_keyward "sqlite://$WORK/keyward.db?mode=rwc"
bench_create_key "bench orders client"
say "keyward on 127.0.0.1:$KEYWARD_PORT, standard key ${KEY:0:12}…"

# --------------------------------------------------------------- h2load
# load NAME URL "LOAD" "SERVERS" MIN-BYTES EXTRA-ARGS...: a warm-up run, then
# the timed run; writes NAME.out (h2load's report), NAME.tsv (per-request
# log), NAME.cpu (CPU ticks the SERVERS used during the timed run) and
# NAME.cpu.SERVER (each server's share).
load() {
  local name="$1" url="$2" load="$3" servers="$4" min="$5" server
  local -A before
  shift 5
  # shellcheck disable=SC2086 # LOAD and SERVERS are lists
  {
    bench_h2load "$name-warmup" "$min" $load -t 1 -D "$WARMUP" "$@" "$url"
    for server in $servers; do before[$server]="$(cpu_ticks "$server")"; done
    bench_h2load "$name" "$min" $load -t 1 -D "$DURATION" --log-file "$WORK/$name.tsv" "$@" "$url"
    local total=0 used
    for server in $servers; do
      used=$(($(cpu_ticks "$server") - before[$server]))
      echo "$used" >"$WORK/$name.cpu.$server"
      total=$((total + used))
    done
  }
  echo "$total" >"$WORK/$name.cpu"
  grep -E '^(finished in|requests:|status codes:|traffic:)' "$WORK/$name.out" | sed "s/^/  $name: /" >&2
}

# refused NAME URL ARGS...: one request must get no response body (a gRPC
# error) or a 4xx status (an HTTP refusal), never an answer.
refused() {
  local name="$1" url="$2"
  shift 2
  h2load -n 1 -c 1 "$@" "$url" >"$WORK/$name.out" 2>&1 || true
  grep -qE 'traffic: .*\(0\) data|status codes: 0 2xx, 0 3xx, 1 4xx' "$WORK/$name.out" ||
    { cat "$WORK/$name.out" >&2; die "$name: a request without a key was answered"; }
}

# ------------------------------------------------- 1. orders-service, gRPC
PROTO=(-import-path examples/orders-service/proto -proto orders/v1/orders.proto)
# create_order PORT [grpcurl args]: prints the new order's id
create_order() {
  local port="$1" created
  shift
  created="$("$GRPCURL" -plaintext "${PROTO[@]}" "$@" -d '{"item": "tea", "quantity": 1}' \
    "127.0.0.1:$port" orders.v1.OrderService/CreateOrder)" || die "CreateOrder on port $port failed"
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])["order"]["id"])' "$created"
}

PROTECTED_PORT="$(free_port)"
UNPROTECTED_PORT="$(free_port)"
bench_start orders-protected "$ORDERS" --keyward-url "http://127.0.0.1:$KEYWARD_PORT" \
  --listen "127.0.0.1:$PROTECTED_PORT"
bench_start orders-unprotected "$ORDERS" --no-auth --listen "127.0.0.1:$UNPROTECTED_PORT"
bench_wait_port "$PROTECTED_PORT" orders-protected
bench_wait_port "$UNPROTECTED_PORT" orders-unprotected
ORDER_P="$(create_order "$PROTECTED_PORT" -H "authorization: Bearer $KEY")"
ORDER_U="$(create_order "$UNPROTECTED_PORT")"
[[ "$ORDER_P" == "$ORDER_U" ]] || die "orders differ: $ORDER_P vs $ORDER_U"

# The GetOrder request as gRPC frames it: 0x00 (not compressed), big-endian
# u32 length, then the protobuf GetOrderRequest { id = 1 (string) }.
python3 - "$ORDER_P" "$WORK/get_order.bin" <<'PY'
import struct, sys
order_id = sys.argv[1].encode()
message = bytes([0x0A, len(order_id)]) + order_id  # field 1, wire type 2
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
PY
GRPC_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers' -d "$WORK/get_order.bin")
GET_ORDER=/orders.v1.OrderService/GetOrder
AUTH=(-H "authorization: Bearer $KEY")
# A GetOrderResponse with its order and caller is well over 20 bytes (a gRPC
# error is a 200 with no body).
ORDER_BYTES=20

bench_h2load unprotected-check "$ORDER_BYTES" -n 20 -c 1 "${GRPC_HEADERS[@]}" \
  "http://127.0.0.1:$UNPROTECTED_PORT$GET_ORDER"
bench_h2load protected-check "$ORDER_BYTES" -n 20 -c 1 "${GRPC_HEADERS[@]}" "${AUTH[@]}" \
  "http://127.0.0.1:$PROTECTED_PORT$GET_ORDER"
refused protected-no-key "http://127.0.0.1:$PROTECTED_PORT$GET_ORDER" "${GRPC_HEADERS[@]}"

say "part 1: orders-service GetOrder, h2load $GRPC_LOAD, $ROUNDS round(s) of ${WARMUP}s warm-up + ${DURATION}s each"
UPTIME_1="$(uptime)"
PSI_1="$(head -n1 /proc/pressure/cpu 2>/dev/null || echo n/a)"
# Rounds alternate the order (U P, P U, ...) so that a slow spell of a
# shared machine hits both alike. The same headers for both (the unprotected
# service ignores the key).
for round in $(seq "$ROUNDS"); do
  if ((round % 2 == 1)); then order=(unprotected protected); else order=(protected unprotected); fi
  for what in "${order[@]}"; do
    if [[ $what == unprotected ]]; then
      load "unprotected-$round" "http://127.0.0.1:$UNPROTECTED_PORT$GET_ORDER" "$GRPC_LOAD" \
        "orders-unprotected" "$ORDER_BYTES" "${GRPC_HEADERS[@]}" "${AUTH[@]}"
    else
      load "protected-$round" "http://127.0.0.1:$PROTECTED_PORT$GET_ORDER" "$GRPC_LOAD" \
        "orders-protected keyward" "$ORDER_BYTES" "${GRPC_HEADERS[@]}" "${AUTH[@]}"
    fi
  done
done

# ------------------------------------------------------------- 2. Envoy
UPSTREAM_PORT="$(free_port)"
bench_start upstream "$UPSTREAM" "127.0.0.1:$UPSTREAM_PORT"
bench_wait_port "$UPSTREAM_PORT" upstream

NULL_AUTHZ_PORT="$(free_port)"
bench_start null-authz "$NULL_AUTHZ" "127.0.0.1:$NULL_AUTHZ_PORT"
bench_wait_port "$NULL_AUTHZ_PORT" null-authz

# envoy_config OUT MODE PORT [AUTHZ_PORT]: deploy/envoy/envoy.yaml with the
# compose names and ports rewritten (as tests/api/envoy.rs does). MODE:
# `none` (no auth filter), `native` (Envoy's static api_key_auth filter with
# the bench key instead of ext_authz), `ext_authz` (to AUTHZ_PORT). Active
# health checks are dropped: the null server has no health service, and both
# ext_authz setups must do the same work.
envoy_config() {
  python3 - "$ROOT/deploy/envoy/envoy.yaml" "$1" "$2" "$3" "$UPSTREAM_PORT" "${4:-0}" "$KEY" <<'PY'
import re, sys
src, out, mode, port, upstream, authz, key = sys.argv[1:]
text = open(src).read()
for old, new in [
    ("port_value: 9901", "port_value: 0"),
    ("port_value: 10000", f"port_value: {port}"),
    ("address: 0.0.0.0", "address: 127.0.0.1"),
    # The compose service names (one server plays both replicas here).
    ("address: upstream, port_value: 8080", f"address: 127.0.0.1, port_value: {upstream}"),
    ("address: keyward-1, port_value: 50051", f"address: 127.0.0.1, port_value: {authz}"),
    ("address: keyward-2, port_value: 50051", f"address: 127.0.0.1, port_value: {authz}"),
]:
    assert old in text, old
    text = text.replace(old, new)
text, n = re.subn(r"\n( *)# grpc\.health[^\n]*\n\1health_checks:\n(?:\1 +.*\n)*", "\n", text)
assert n == 1, "health_checks not found"
if mode in ("none", "native"):
    # Drop the ext_authz HTTP filter and the per-route settings naming it.
    filter_re = r"\n( *)- name: envoy\.filters\.http\.ext_authz\n.*?(?=\n\1- name: )"
    native = ""
    if mode == "native":
        native = (
            "\n\\1- name: envoy.filters.http.api_key_auth"
            "\n\\1  typed_config:"
            '\n\\1    "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth'
            f"\n\\1    credentials: [{{ key: \"{key}\", client: bench }}]"
            "\n\\1    key_sources: [{ header: authorization }]"
        )
    text, n = re.subn(filter_re, native, text, flags=re.S)
    assert n == 1, "ext_authz filter not found"
    text, n = re.subn(r"\n( *)typed_per_filter_config:\n(?:\1 .*\n)*", "\n", text)
    assert n == 1, "typed_per_filter_config not found"
    listener = text.split("static_resources:")[1].split("clusters:")[0]
    assert "ext_authz" not in listener, "ext_authz left in the listener"
open(out, "w").write(text)
PY
}

# Setups: NAME MODE AUTHZ-SERVER (the process whose CPU counts as authorization)
ENVOY_SETUPS=(none native null keyward)
declare -A ENVOY_PORT
for setup in "${ENVOY_SETUPS[@]}"; do
  ENVOY_PORT[$setup]="$(free_port)"
  case "$setup" in
    none | native) envoy_config "$WORK/envoy-$setup.yaml" "$setup" "${ENVOY_PORT[$setup]}" ;;
    null) envoy_config "$WORK/envoy-$setup.yaml" ext_authz "${ENVOY_PORT[$setup]}" "$NULL_AUTHZ_PORT" ;;
    keyward) envoy_config "$WORK/envoy-$setup.yaml" ext_authz "${ENVOY_PORT[$setup]}" "$KEYWARD_PORT" ;;
  esac
done
# Envoy's own logging off the hot path; one worker thread (all on CPU 0 anyway).
ENVOY_ARGS=(--disable-hot-restart --concurrency 1 -l error)
for setup in "${ENVOY_SETUPS[@]}"; do
  bench_start "envoy-$setup" "$ENVOY" -c "$WORK/envoy-$setup.yaml" "${ENVOY_ARGS[@]}"
done
for setup in "${ENVOY_SETUPS[@]}"; do
  bench_wait_port "${ENVOY_PORT[$setup]}" "envoy-$setup"
  # The upstream answers "ok": 2 bytes.
  bench_h2load "envoy-$setup-check" 2 -n 20 -c 1 "${AUTH[@]}" "http://127.0.0.1:${ENVOY_PORT[$setup]}/"
done
# Authentication in force: no key, refused (401).
for setup in native null keyward; do
  [[ $setup == null ]] && continue # the null server allows everything, by design
  refused "envoy-$setup-no-key" "http://127.0.0.1:${ENVOY_PORT[$setup]}/"
done

authz_server() { # authz_server SETUP: the authorization process of that setup
  case "$1" in null) echo null-authz ;; keyward) echo keyward ;; *) echo "" ;; esac
}

say "part 2: Envoy GET /, h2load $ENVOY_LOAD, $ROUNDS round(s) of ${WARMUP}s warm-up + ${DURATION}s per setup"
# Each round runs the four setups in a rotated order, so a slow spell of a
# shared machine does not always hit the same one.
for round in $(seq "$ROUNDS"); do
  for i in 0 1 2 3; do
    setup="${ENVOY_SETUPS[$(((i + round - 1) % 4))]}"
    load "envoy-$setup-$round" "http://127.0.0.1:${ENVOY_PORT[$setup]}/" "$ENVOY_LOAD" \
      "envoy-$setup upstream $(authz_server "$setup")" 2 "${AUTH[@]}"
  done
done
UPTIME_2="$(uptime)"
PSI_2="$(head -n1 /proc/pressure/cpu 2>/dev/null || echo n/a)"
for name in keyward orders-protected orders-unprotected upstream null-authz "${ENVOY_SETUPS[@]/#/envoy-}"; do
  bench_alive "$name"
done

# ------------------------------------------------------------- summary
bench_summary "$WORK" "$GRPC_LOAD" "$ENVOY_LOAD" "$DURATION" "$WARMUP" "$BENCH_PIN" "$(getconf CLK_TCK)" "$QUICK" "$ROUNDS" <<'PY'
import sys
from h2load import latencies, median, pct, report
work, grpc_load, envoy_load, duration, warmup, pin, clk_tck, quick, rounds = sys.argv[1:]
rounds = int(rounds)

def run(name):
    r = report(f"{work}/{name}.out")
    return dict(rps=r["rps"], n=r["done"], lat=latencies(f"{work}/{name}.tsv"),
                ticks=int(open(f"{work}/{name}.cpu").read()))

def pooled(runs):
    lat = [x for r in runs for x in r["lat"]]
    n = sum(r["n"] for r in runs)
    return dict(rps=sum(r["rps"] for r in runs) / len(runs), n=n,
                p50=pct(lat, 50) / 1000, p99=pct(lat, 99) / 1000,
                cpu=sum(r["ticks"] for r in runs) / int(clk_tck) * 1e6 / max(n, 1),
                each=[r["rps"] for r in runs])

part1 = {kind: [run(f"{kind}-{i}") for i in range(1, rounds + 1)] for kind in ["unprotected", "protected"]}
losses = [(1 - p["rps"] / u["rps"]) * 100 for u, p in zip(part1["unprotected"], part1["protected"])]
loss = median(losses)
r = {kind: pooled(runs) for kind, runs in part1.items()}
def row(label, x):
    return f"| {label} | {x['rps']:,.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['cpu']:.1f} | {x['n']:,} |"
head = ("| run | req/s | p50 ms | p99 ms | server CPU µs/req | requests |\n"
        "|---|---:|---:|---:|---:|---:|")
u, p = r["unprotected"], r["protected"]
print()
if quick == "1":
    print("QUICK smoke run (debug binaries, 1 s loads): figures are not meaningful")
print(f"each run: {warmup} s warm-up run, then h2load -D {duration} (measured); CPU pinning: "
      f"{'servers on CPU 0, h2load on CPU 1' if pin == '1' else 'off'}")
print()
print(f"orders-service GetOrder (gRPC, h2load {grpc_load}), {rounds} round(s), req/s the mean of the rounds; "
      "protected CPU includes keyward's:")
print(head)
print(row("unprotected (`--no-auth`)", u))
print(row("protected (KeywardAuthLayer + RemoteValidator)", p))
print(f"\nreq/s per round: unprotected {', '.join(f'{x:,.0f}' for x in u['each'])}; "
      f"protected {', '.join(f'{x:,.0f}' for x in p['each'])}")
print(f"\nthroughput loss: median of rounds {loss:.1f}% (rounds {', '.join(f'{x:.1f}%' for x in sorted(losses))}) (target <= 5%: {'not judged (--quick)' if quick == '1' else 'met' if loss <= 5 else 'MISSED'}); "
      f"p50 {p['p50'] - u['p50']:+.3f} ms, p99 {p['p99'] - u['p99']:+.3f} ms; "
      f"CPU {p['cpu'] - u['cpu']:+.1f} µs/req ({(p['cpu'] / u['cpu'] - 1) * 100:+.1f}%)")
print()
def server_cpu(name, server):
    ticks = int(open(f"{work}/{name}.cpu.{server}").read())
    n = report(f"{work}/{name}.out")["done"]
    return ticks / int(clk_tck) * 1e6 / max(n, 1)

setups = [("none", "no auth", None), ("native", "Envoy native api_key_auth", None),
          ("null", "ext_authz → null server", "null-authz"), ("keyward", "ext_authz → keyward", "keyward")]
e = {}
for setup, _, authz in setups:
    names = [f"envoy-{setup}-{i}" for i in range(1, rounds + 1)]
    x = pooled([run(n) for n in names])
    x["envoy"] = median([server_cpu(n, f"envoy-{setup}") for n in names])
    x["authz"] = median([server_cpu(n, authz) for n in names]) if authz else None
    e[setup] = x
print(f"Envoy GET / (h2c, Envoy --concurrency 1, h2load {envoy_load}), {rounds} round(s), rotated order; "
      "CPU per request is the median of the rounds:")
print("| setup | req/s | p50 ms | p99 ms | Envoy CPU µs/req | authz server CPU µs/req | requests |\n"
      "|---|---:|---:|---:|---:|---:|---:|")
for setup, label, authz in setups:
    x = e[setup]
    authz_cpu = f"{x['authz']:.1f}" if x["authz"] is not None else "–"
    print(f"| {label} | {x['rps']:,.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['envoy']:.1f} | {authz_cpu} | {x['n']:,} |")
null, kw = e["null"], e["keyward"]
ratio, cpu_ratio = kw["rps"] / null["rps"], kw["authz"] / null["authz"]
def judged(ok):
    return "not judged (--quick)" if quick == "1" else "met" if ok else "MISSED"
print(f"\nkeyward vs the null server: throughput {ratio:.3f}x (target >= 0.9: {judged(ratio >= 0.9)}); "
      f"CPU per Check {kw['authz']:.1f} vs {null['authz']:.1f} µs = {cpu_ratio:.2f}x (target <= 1.2: {judged(cpu_ratio <= 1.2)})")
print(f"ext_authz to keyward vs no auth: p50 {kw['p50'] - e['none']['p50']:+.3f} ms, throughput "
      f"{(1 - kw['rps'] / e['none']['rps']) * 100:.1f}% lower; Envoy's own CPU "
      f"{e['none']['envoy']:.1f} (no auth), {e['native']['envoy']:.1f} (native), {kw['envoy']:.1f} µs/req (ext_authz)")
PY
echo
echo "load before: $UPTIME_1 | CPU pressure: $PSI_1"
echo "load after:  $UPTIME_2 | CPU pressure: $PSI_2"
