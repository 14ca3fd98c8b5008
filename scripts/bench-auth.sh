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
# 2. Envoy with keyward as ext_authz (deploy/envoy/envoy.yaml, ports rewritten)
#    vs the same config without the ext_authz filter; GET / to a trivial
#    HTTP/1.1 upstream (examples/bench_upstream.rs), one request in flight,
#    so the latency difference is what ext_authz adds to each request.
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
#   BENCH_ENVOY_LOAD="-c 1 -m 1"   h2load clients/streams for part 2
#   BENCH_PIN=1|0            pin servers / load generator to CPUs (default: 1 with 2+ CPUs)
#   BENCH_SKIP_BUILD=1       use the binaries already in target/release (--quick: target/debug)
#   BENCH_KEEP=1             keep the temporary directory (logs, configs, h2load logs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "bench-auth: unknown argument $arg" >&2; exit 2 ;;
  esac
done

DURATION="${BENCH_DURATION:-5}"
WARMUP="${BENCH_WARMUP:-2}"
ROUNDS="${BENCH_ROUNDS:-6}"
GRPC_LOAD="${BENCH_GRPC_LOAD:--c 8 -m 16}"
ENVOY_LOAD="${BENCH_ENVOY_LOAD:--c 1 -m 1}"
PROFILE=release
if [[ $QUICK == 1 ]]; then
  DURATION=1
  WARMUP=1
  ROUNDS=1
  GRPC_LOAD="-c 2 -m 4"
  PROFILE=debug
fi
if [[ -z "${BENCH_PIN:-}" ]]; then
  if [[ "$(nproc)" -ge 2 ]] && command -v taskset >/dev/null 2>&1; then BENCH_PIN=1; else BENCH_PIN=0; fi
fi

say() { printf '[bench-auth] %s\n' "$*" >&2; }
die() { printf '[bench-auth] error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ build
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  if [[ $QUICK == 1 ]]; then
    # The features the test suite builds with, so its build is reused.
    cargo build --workspace --all-features --bins >&2
  else
    say "building release binaries (slow the first time)"
    cargo build --release -p keyward -p orders-service --bins >&2
  fi
  # std-only, compiled directly: `cargo build --example` would also build the
  # root package's dev-dependencies (and unify their features into keyward).
  mkdir -p "target/$PROFILE/examples"
  rustc --edition 2021 -C opt-level=3 --crate-name bench_upstream \
    -o "target/$PROFILE/examples/bench_upstream" examples/bench_upstream.rs >&2
fi
KEYWARD="$ROOT/target/$PROFILE/keyward"
ORDERS="$ROOT/target/$PROFILE/orders-service"
UPSTREAM="$ROOT/target/$PROFILE/examples/bench_upstream"
for bin in "$KEYWARD" "$ORDERS" "$UPSTREAM"; do
  [[ -x "$bin" ]] || die "$bin missing (run without BENCH_SKIP_BUILD)"
done

bash scripts/install-tools.sh >&2
# shellcheck source=scripts/env.sh
source scripts/env.sh
ENVOY="${KEYWARD_ENVOY_BIN:-$(command -v envoy)}"
GRPCURL="${KEYWARD_GRPCURL_BIN:-$(command -v grpcurl)}"
command -v h2load >/dev/null || die "h2load missing"

# ------------------------------------------------------- processes, cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench.XXXXXX")"
PIDS=()
declare -A PID_OF
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
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

# start NAME COMMAND...: runs a server in the background, logs in $WORK/NAME.log
start() {
  local name="$1"
  shift
  "${SERVER_CPU[@]}" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  PID_OF[$name]=$!
}

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

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT NAME: until something accepts on 127.0.0.1:PORT (30 s)
wait_port() {
  local i
  for i in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  cat "$WORK/$2.log" >&2 || true
  die "$2 did not listen on 127.0.0.1:$1"
}

# -------------------------------------------------------------- keyward
KEYWARD_PORT="$(free_port)"
DB="sqlite://$WORK/keyward.db?mode=rwc"
ADMIN="$("$KEYWARD" bootstrap --database-url "$DB" --organization bench 2>"$WORK/bootstrap.log")"
start keyward "$KEYWARD" serve --database-url "$DB" --listen "127.0.0.1:$KEYWARD_PORT"
wait_port "$KEYWARD_PORT" keyward
KEY="$("$GRPCURL" -plaintext -H "authorization: Bearer $ADMIN" \
  -d '{"name": "bench orders client", "scopes": ["orders:read", "orders:write"]}' \
  "127.0.0.1:$KEYWARD_PORT" keyward.v1.KeyAdminService/CreateKey |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')"
[[ "$KEY" == sk_live_* ]] || die "CreateKey returned no standard key"
say "keyward on 127.0.0.1:$KEYWARD_PORT, standard key ${KEY:0:12}…"

# --------------------------------------------------------------- h2load
# load NAME URL "LOAD" "SERVERS" EXTRA-ARGS...: a warm-up run, then the timed
# run; writes NAME.out (h2load's report), NAME.tsv (per-request log) and
# NAME.cpu (CPU ticks the SERVERS used during the timed run).
load() {
  local name="$1" url="$2" load="$3" servers="$4" before after
  shift 4
  # shellcheck disable=SC2086 # LOAD and SERVERS are lists
  {
    "${LOAD_CPU[@]}" h2load $load -t 1 -D "$WARMUP" "$@" "$url" >"$WORK/$name-warmup.out" 2>&1 ||
      { cat "$WORK/$name-warmup.out" >&2; die "h2load $name (warm-up) failed"; }
    before="$(cpu_ticks $servers)"
    "${LOAD_CPU[@]}" h2load $load -t 1 -D "$DURATION" --log-file "$WORK/$name.tsv" "$@" "$url" \
      >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; die "h2load $name failed"; }
    after="$(cpu_ticks $servers)"
  }
  echo "$((after - before))" >"$WORK/$name.cpu"
  grep -E '^(finished in|requests:|status codes:|traffic:)' "$WORK/$name.out" | sed "s/^/  $name: /" >&2
}

# check NAME URL MIN-BYTES EXTRA-ARGS...: 20 requests must all succeed, each
# with at least MIN-BYTES of response body
check() {
  local name="$1" url="$2" min="$3"
  shift 3
  h2load -n 20 -c 1 "$@" "$url" >"$WORK/$name-check.out" 2>&1 || true
  python3 - "$WORK/$name-check.out" "$min" <<'PY' || { cat "$WORK/$name-check.out" >&2; die "$name: the probe requests failed"; }
import re, sys
out = open(sys.argv[1]).read()
ok = re.search(r"requests: 20 total, 20 started, 20 done, 20 succeeded, 0 failed, 0 errored", out)
data = re.search(r"traffic: .*\((\d+)\) data", out)
# A gRPC error is HTTP 200 with an empty body: insist on response data.
sys.exit(0 if ok and data and int(data.group(1)) >= 20 * int(sys.argv[2]) else 1)
PY
}

# ------------------------------------------------- 1. orders-service, gRPC
PROTO=(-import-path examples/orders-service/proto -proto orders/v1/orders.proto)
# create_order PORT [grpcurl args]: prints the new order's id
create_order() {
  local port="$1"
  shift
  "$GRPCURL" -plaintext "${PROTO[@]}" "$@" -d '{"item": "tea", "quantity": 1}' \
    "127.0.0.1:$port" orders.v1.OrderService/CreateOrder |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["order"]["id"])'
}

PROTECTED_PORT="$(free_port)"
UNPROTECTED_PORT="$(free_port)"
start orders-protected "$ORDERS" --keyward-url "http://127.0.0.1:$KEYWARD_PORT" \
  --listen "127.0.0.1:$PROTECTED_PORT"
start orders-unprotected "$ORDERS" --no-auth --listen "127.0.0.1:$UNPROTECTED_PORT"
wait_port "$PROTECTED_PORT" orders-protected
wait_port "$UNPROTECTED_PORT" orders-unprotected
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

# A GetOrderResponse with its order and caller is well over 20 bytes.
check unprotected "http://127.0.0.1:$UNPROTECTED_PORT$GET_ORDER" 20 "${GRPC_HEADERS[@]}"
check protected "http://127.0.0.1:$PROTECTED_PORT$GET_ORDER" 20 "${GRPC_HEADERS[@]}" "${AUTH[@]}"
# Without a key the protected service must refuse (an empty-bodied answer).
if h2load -n 1 -c 1 "${GRPC_HEADERS[@]}" "http://127.0.0.1:$PROTECTED_PORT$GET_ORDER" 2>&1 |
  grep -qE 'traffic: .*\([1-9][0-9]*\) data'; then
  die "the protected service answered GetOrder without a key"
fi

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
        "orders-unprotected" "${GRPC_HEADERS[@]}" "${AUTH[@]}"
    else
      load "protected-$round" "http://127.0.0.1:$PROTECTED_PORT$GET_ORDER" "$GRPC_LOAD" \
        "orders-protected keyward" "${GRPC_HEADERS[@]}" "${AUTH[@]}"
    fi
  done
done

# ------------------------------------------------------------- 2. Envoy
UPSTREAM_PORT="$(free_port)"
start upstream "$UPSTREAM" "127.0.0.1:$UPSTREAM_PORT"
wait_port "$UPSTREAM_PORT" upstream

# envoy_config OUT WITH_EXT_AUTHZ: deploy/envoy/envoy.yaml with the ports
# rewritten (as tests/api/envoy.rs does), optionally without ext_authz.
envoy_config() {
  python3 - "$ROOT/deploy/envoy/envoy.yaml" "$1" "$2" "$3" "$UPSTREAM_PORT" "$KEYWARD_PORT" <<'PY'
import re, sys
src, out, with_authz, port, upstream, keyward = sys.argv[1:]
text = open(src).read()
for old, new in [
    ("port_value: 9901", "port_value: 0"),
    ("port_value: 10000", f"port_value: {port}"),
    ("address: 0.0.0.0", "address: 127.0.0.1"),
    ("port_value: 8080", f"port_value: {upstream}"),
    ("port_value: 50051", f"port_value: {keyward}"),
]:
    assert old in text, old
    text = text.replace(old, new)
if with_authz == "0":
    # Drop the ext_authz HTTP filter and the per-route settings naming it.
    text, n = re.subn(r"\n( *)- name: envoy\.filters\.http\.ext_authz\n.*?(?=\n\1- name: )", "", text, flags=re.S)
    assert n == 1, "ext_authz filter not found"
    text, n = re.subn(r"\n( *)typed_per_filter_config:\n(?:\1 .*\n)*", "\n", text)
    assert n == 1, "typed_per_filter_config not found"
    listener = text.split("static_resources:")[1].split("clusters:")[0]
    assert "ext_authz" not in listener, "ext_authz left in the listener"
open(out, "w").write(text)
PY
}

ENVOY_ALONE_PORT="$(free_port)"
ENVOY_AUTHZ_PORT="$(free_port)"
envoy_config "$WORK/envoy-alone.yaml" 0 "$ENVOY_ALONE_PORT"
envoy_config "$WORK/envoy-authz.yaml" 1 "$ENVOY_AUTHZ_PORT"
# Envoy's own logging off the hot path; one worker thread (all on CPU 0 anyway).
ENVOY_ARGS=(--disable-hot-restart --concurrency 1 -l error)
start envoy-alone "$ENVOY" -c "$WORK/envoy-alone.yaml" "${ENVOY_ARGS[@]}"
start envoy-authz "$ENVOY" -c "$WORK/envoy-authz.yaml" "${ENVOY_ARGS[@]}"
wait_port "$ENVOY_ALONE_PORT" envoy-alone
wait_port "$ENVOY_AUTHZ_PORT" envoy-authz

check envoy-alone "http://127.0.0.1:$ENVOY_ALONE_PORT/" 2 "${AUTH[@]}"
check envoy-authz "http://127.0.0.1:$ENVOY_AUTHZ_PORT/" 2 "${AUTH[@]}"
# ext_authz in force: no key, 401.
h2load -n 1 -c 1 "http://127.0.0.1:$ENVOY_AUTHZ_PORT/" 2>&1 | grep -q 'status codes: 0 2xx, 0 3xx, 1 4xx' ||
  die "Envoy with ext_authz let a request without a key through"

say "part 2: Envoy GET /, h2load $ENVOY_LOAD, ${WARMUP}s warm-up + ${DURATION}s"
load envoy-alone "http://127.0.0.1:$ENVOY_ALONE_PORT/" "$ENVOY_LOAD" "envoy-alone upstream" "${AUTH[@]}"
load envoy-authz "http://127.0.0.1:$ENVOY_AUTHZ_PORT/" "$ENVOY_LOAD" "envoy-authz upstream keyward" "${AUTH[@]}"
UPTIME_2="$(uptime)"
PSI_2="$(head -n1 /proc/pressure/cpu 2>/dev/null || echo n/a)"

# ------------------------------------------------------------- summary
python3 - "$WORK" "$GRPC_LOAD" "$ENVOY_LOAD" "$DURATION" "$WARMUP" "$BENCH_PIN" "$(getconf CLK_TCK)" "$QUICK" "$ROUNDS" <<'PY'
import re, sys
work, grpc_load, envoy_load, duration, warmup, pin, clk_tck, quick, rounds = sys.argv[1:]
rounds = int(rounds)

def run(name):
    out = open(f"{work}/{name}.out").read()
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    total, done, ok, failed, errored = map(int, m.groups())
    data = int(re.search(r"traffic: .*\((\d+)\) data", out).group(1))
    lat = [int(line.split("\t")[2]) for line in open(f"{work}/{name}.tsv") if line.strip()]
    ticks = int(open(f"{work}/{name}.cpu").read())
    return dict(rps=rps, n=done, bad=failed + errored + (total - ok), lat=lat, ticks=ticks, data=data, ok=ok)

def pooled(runs):
    lat = sorted(x for r in runs for x in r["lat"])
    pct = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] / 1000  # ms
    n = sum(r["n"] for r in runs)
    return dict(rps=sum(r["rps"] for r in runs) / len(runs), n=n, bad=sum(r["bad"] for r in runs),
                p50=pct(50), p99=pct(99),
                cpu=sum(r["ticks"] for r in runs) / int(clk_tck) * 1e6 / max(n, 1),
                bytes=sum(r["data"] for r in runs) / max(sum(r["ok"] for r in runs), 1),
                each=[r["rps"] for r in runs])

part1 = {kind: [run(f"{kind}-{i}") for i in range(1, rounds + 1)] for kind in ["unprotected", "protected"]}
losses = sorted((1 - p["rps"] / u["rps"]) * 100 for u, p in zip(part1["unprotected"], part1["protected"]))
median_loss = losses[len(losses) // 2] if len(losses) % 2 else (losses[len(losses) // 2 - 1] + losses[len(losses) // 2]) / 2
r = {kind: pooled(runs) for kind, runs in part1.items()}
r.update({name: pooled([run(name)]) for name in ["envoy-alone", "envoy-authz"]})
def row(label, x):
    return (f"| {label} | {x['rps']:,.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['cpu']:.1f} "
            f"| {x['n']:,} | {x['bad']} |")
head = ("| run | req/s | p50 ms | p99 ms | server CPU µs/req | requests | failed |\n"
        "|---|---:|---:|---:|---:|---:|---:|")
u, p, a, z = r["unprotected"], r["protected"], r["envoy-alone"], r["envoy-authz"]
loss = median_loss
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
print(f"\nthroughput loss: median of rounds {loss:.1f}% (rounds {', '.join(f'{x:.1f}%' for x in losses)}) (target <= 5%: {'not judged (--quick)' if quick == '1' else 'met' if loss <= 5 else 'MISSED'}); "
      f"p50 {p['p50'] - u['p50']:+.3f} ms, p99 {p['p99'] - u['p99']:+.3f} ms; "
      f"CPU {p['cpu'] - u['cpu']:+.1f} µs/req ({(p['cpu'] / u['cpu'] - 1) * 100:+.1f}%)")
print()
print(f"Envoy GET / (h2c, h2load {envoy_load}); CPU is Envoy + upstream (+ keyward):")
print(head)
print(row("Envoy alone", a))
print(row("Envoy + keyward ext_authz", z))
print(f"\next_authz adds: p50 {z['p50'] - a['p50']:+.3f} ms, p99 {z['p99'] - a['p99']:+.3f} ms, "
      f"CPU {z['cpu'] - a['cpu']:+.1f} µs/req; throughput {(1 - z['rps'] / a['rps']) * 100:.1f}% lower")
for name, x in r.items():
    floor = 20 if name in ("unprotected", "protected") else 2
    if x["bytes"] < floor:
        print(f"WARNING: {name}: {x['bytes']:.0f} response bytes per request: errors in disguise?")
PY
echo
echo "load before: $UPTIME_1 | CPU pressure: $PSI_1"
echo "load after:  $UPTIME_2 | CPU pressure: $PSI_2"
