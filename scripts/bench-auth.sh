#!/usr/bin/env bash
# Measures what keyward's protection costs a service (BENCHMARKS.md, "Auth
# overhead"), with h2load, on loopback only:
#
#   bash scripts/bench-auth.sh            # full run, prints the tables
#   bash scripts/bench-auth.sh --quick    # smoke run (CI): debug binaries, 1 s loads, nothing judged
#
# 1. A null handler (benches/null-service: grpc.health.v1.Health/Check, the
#    same answer whoever calls) protected by KeywardAuthLayer + RemoteValidator
#    (configured as the orders example is; warm verdict cache: keyward's
#    750 ms hint, so about one ValidateKey a second) vs the same binary
#    without the layer; saturating load, in alternating rounds (BENCH_ROUNDS);
#    judged: throughput loss (the median of the rounds') <= 3%.
# 2. Envoy (--concurrency 1) in front of a trivial HTTP/1.1 upstream
#    (examples/bench_upstream.rs), four setups of deploy/envoy/envoy.yaml
#    (ports rewritten) in alternating rounds: no auth; Envoy's native static
#    `api_key_auth` filter; ext_authz to a null authorization server
#    (benches/null-authz: allows everything, same response shape as keyward);
#    ext_authz to keyward. Throughput, latency, and the CPU per request of
#    Envoy and of the authorization server separately; judged: keyward >= 0.9x
#    the null server's throughput, keyward's CPU per Check <= 1.2x the null
#    server's.
# 3. (BENCH_ENVOY_VARIANTS=1, the default, --quick too) Envoy's own CPU per
#    request for variants of the shipped ext_authz settings, each to a null
#    authorization server so that only Envoy's work differs, in rotated
#    rounds like part 2: as shipped (gRPC, `allowed_headers`: only the
#    headers keyward reads; the baseline); without `allowed_headers` (every
#    request header sent); + enable_dynamic_metadata_ingestion:
#    false; HTTP service mode over HTTP/1.1 and over HTTP/2 (to an Envoy
#    answering 200 with null-authz's headers). Req/s, latency, Envoy's and
#    the null server's CPU per request; nothing judged: it is there to choose
#    deploy/envoy/envoy.yaml's settings by.
#
# It builds the release binaries (slow the first time; target/ is reused),
# installs the tools (scripts/install-tools.sh: h2load, envoy, grpcurl), starts
# keyward on a temporary SQLite database, makes the keys, runs the loads and
# prints a summary table per part: req/s, p50/p99 from h2load's per-request
# log, and the CPU time the servers used per request (from /proc). The loads
# take about four minutes, eight with part 3 (at the defaults: 7 s per run,
# 12 runs in part 1, 24 in part 2, 30 in part 3); every process the script
# starts is stopped on exit. Every generated Envoy config is checked with
# `envoy --mode validate` first.
# With 2+ CPUs the servers (keyward, null-service, Envoy, upstream) share
# CPU 0 and h2load gets CPU 1, so the load generator does not compete with what
# it measures; BENCH_PIN=0 turns that off. Other load on the machine skews the
# figures: run it on an otherwise idle machine (it prints the load average and
# CPU pressure before and after, to tell).
#
# Settings (environment):
#   BENCH_DURATION=5         measured seconds per run (h2load -D)
#   BENCH_WARMUP=2           seconds of an unmeasured warm-up run before each
#   BENCH_ROUNDS=6           rounds of each part (part 1: one protected and
#                            one unprotected run each, order alternating, the
#                            loss the median of the rounds' losses; parts 2
#                            and 3: one run per setup, order rotated)
#   BENCH_GRPC_LOAD="-c 8 -m 16"   h2load clients/streams for part 1
#   BENCH_ENVOY_LOAD="-c 8 -m 8"   h2load clients/streams for parts 2 and 3
#   BENCH_ENVOY_VARIANTS=1|0 run part 3 (default 1, --quick too)
#   BENCH_PIN=1|0            pin servers / load generator to CPUs (default: 1 with 2+ CPUs)
#   KEYWARD_BIN=PATH         use the binaries already built: keyward at PATH,
#                            null-service, null-authz and examples/bench_upstream next
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
VARIANTS="${BENCH_ENVOY_VARIANTS:-1}"
[[ $VARIANTS == [01] ]] || die "BENCH_ENVOY_VARIANTS=$VARIANTS: 1 or 0"
if [[ $QUICK == 1 ]]; then
  DURATION=1
  WARMUP=1
  ROUNDS=1
  GRPC_LOAD="-c 2 -m 4"
  ENVOY_LOAD="-c 2 -m 2"
fi

bench_build auth
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

# ------------------------------------------------- 1. the null handler, gRPC

bench_start_null_services bench_start
bench_wait_port "$PROTECTED_PORT" null-protected
bench_wait_port "$UNPROTECTED_PORT" null-unprotected
bench_null_check_body "$WORK/null_check.bin"
GRPC_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers' -d "$WORK/null_check.bin")
AUTH=(-H "authorization: Bearer $KEY")

bench_h2load unprotected-check "$NULL_CHECK_BYTES" -n 20 -c 1 "${GRPC_HEADERS[@]}" \
  "http://127.0.0.1:$UNPROTECTED_PORT$NULL_CHECK"
bench_h2load protected-check "$NULL_CHECK_BYTES" -n 20 -c 1 "${GRPC_HEADERS[@]}" "${AUTH[@]}" \
  "http://127.0.0.1:$PROTECTED_PORT$NULL_CHECK"
refused protected-no-key "http://127.0.0.1:$PROTECTED_PORT$NULL_CHECK" "${GRPC_HEADERS[@]}"

say "part 1: the null handler (Health/Check), h2load $GRPC_LOAD, $ROUNDS round(s) of ${WARMUP}s warm-up + ${DURATION}s each"
UPTIME_1="$(uptime)"
PSI_1="$(head -n1 /proc/pressure/cpu 2>/dev/null || echo n/a)"
# Rounds alternate the order (U P, P U, ...) so that a slow spell of a
# shared machine hits both alike. The same headers for both (the unprotected
# service ignores the key).
for round in $(seq "$ROUNDS"); do
  if ((round % 2 == 1)); then order=(unprotected protected); else order=(protected unprotected); fi
  for what in "${order[@]}"; do
    if [[ $what == unprotected ]]; then
      load "unprotected-$round" "http://127.0.0.1:$UNPROTECTED_PORT$NULL_CHECK" "$GRPC_LOAD" \
        "null-unprotected" "$NULL_CHECK_BYTES" "${GRPC_HEADERS[@]}" "${AUTH[@]}"
    else
      load "protected-$round" "http://127.0.0.1:$PROTECTED_PORT$NULL_CHECK" "$GRPC_LOAD" \
        "null-protected keyward" "$NULL_CHECK_BYTES" "${GRPC_HEADERS[@]}" "${AUTH[@]}"
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
# compose names and ports rewritten (as tests/api/envoy.rs does), then
# checked with `envoy --mode validate`. MODE: `none` (no auth filter),
# `native` (Envoy's static api_key_auth filter with the bench key instead of
# ext_authz), `ext_authz` (to AUTHZ_PORT, as shipped), or one of part 3's
# variants of ext_authz (see there): `grpc-all-headers`,
# `grpc-no-metadata`, `http`, `http-h2`. Active health checks are dropped: the
# null server has no health service, and every ext_authz setup must do the
# same work.
envoy_config() {
  python3 - "$ROOT/deploy/envoy/envoy.yaml" "$1" "$2" "$3" "$UPSTREAM_PORT" "${4:-0}" "$KEY" <<'PY'
import re, sys
src, out, mode, port, upstream, authz, key = sys.argv[1:]
assert mode in ("none", "native", "ext_authz", "grpc-all-headers", "grpc-no-metadata",
                "http", "http-h2"), mode
text = open(src).read()
# The shipped filter sends keyward only the headers it reads (src/ext_authz.rs).
READS = ["authorization", "x-api-key", "idempotency-key", "user-agent", "x-forwarded-for"]
shipped = re.search(r"\n( *)allowed_headers:\n(?:\1 +.*\n)*", text)
assert shipped and sorted(re.findall(r"exact: (\S+)", shipped.group(0))) == sorted(READS), \
    "deploy/envoy/envoy.yaml's allowed_headers are not the headers keyward reads"
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

# Part 3's variants: edits of the shipped ext_authz filter (and cluster).
# The upstream headers keyward sets.
SETS = ["x-keyward-key-id", "x-keyward-organization-id", "x-keyward-workspace-id",
        "x-keyward-scopes", "x-keyward-environment"]
def matchers(names):
    return "{ patterns: [" + ", ".join(f"{{ exact: {name} }}" for name in names) + "] }"
def filter_settings(*lines):
    # New settings right after the ext_authz filter's "@type" line.
    global text
    head = r'\n( *)"@type": type\.googleapis\.com/envoy\.extensions\.filters\.http\.ext_authz\.v3\.ExtAuthz\n'
    text, n = re.subn(head, lambda m: m.group(0) + "".join(f"{m.group(1)}{line}\n" for line in lines), text)
    assert n == 1, "ext_authz filter not found"
if mode == "grpc-all-headers":
    # Without it every request header goes to the authorization server.
    text = text.replace(shipped.group(0), "\n")
if mode == "grpc-no-metadata":
    filter_settings("enable_dynamic_metadata_ingestion: false")
if mode in ("http", "http-h2"):
    # The same cluster (both endpoints) and timeout; HTTP/1.1 unless http-h2.
    grpc = r"\n( *)grpc_service:\n\1  envoy_grpc: \{ cluster_name: keyward \}\n\1  timeout: 1s\n"
    http = (
        "\n\\1http_service:"
        f'\n\\1  server_uri: {{ uri: "http://127.0.0.1:{authz}", cluster: keyward, timeout: 1s }}'
        "\n\\1  authorization_response:"
        f"\n\\1    allowed_upstream_headers: {matchers(SETS)}"
        f"\n\\1    allowed_client_headers_on_success: {matchers(['ratelimit-policy', 'ratelimit'])}"
        f"\n\\1    allowed_client_headers: {matchers(['www-authenticate', 'retry-after', 'ratelimit-policy', 'ratelimit'])}"
        "\n"
    )
    text, n = re.subn(grpc, http, text)
    assert n == 1, "grpc_service not found"
    if mode == "http":
        text, n = re.subn(r"\n( *)typed_extension_protocol_options:\n(?:\1 +.*\n)*", "\n", text)
        assert n == 1, "typed_extension_protocol_options not found"
open(out, "w").write(text)
PY
  "$ENVOY" --mode validate -c "$1" -l error >"$1.validate" 2>&1 ||
    { cat "$1.validate" >&2; die "envoy --mode validate -c $1 failed"; }
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
for name in keyward null-protected null-unprotected upstream null-authz "${ENVOY_SETUPS[@]/#/envoy-}"; do
  bench_alive "$name"
done

# -------------------------------------------- 3. Envoy ext_authz variants
# Envoy's own CPU per request for variants of the shipped ext_authz settings,
# every one against a null authorization server, so that only Envoy's work
# differs (see envoy_config for the edits):
#   grpc                  as shipped (the baseline): gRPC, `allowed_headers`
#                         the five headers keyward reads (authorization,
#                         x-api-key, idempotency-key, user-agent,
#                         x-forwarded-for)
#   grpc-all-headers      without allowed_headers: every request header in
#                         the Check request
#   grpc-no-metadata      + enable_dynamic_metadata_ingestion: false (Envoy
#                         ignores the dynamic metadata the server sends)
#   http                  HTTP service mode over HTTP/1.1 (same cluster and
#                         timeout), allowed_headers as above,
#                         allowed_upstream_headers x-keyward-*
#   http-h2               the same over HTTP/2
# (`grpc` is part 2's `null` setup again, measured in part 3's own rounds.)
# HTTP mode also loses what keyward takes from the Check request beyond
# headers (an HTTP check carries the request's headers only): the route's
# context_extensions (required scopes and environment, cost) and the client's
# address; nor can the server answer with dynamic metadata. keyward has no
# HTTP authorization endpoint: these variants measure Envoy's side only.
# The gRPC variants use null-authz; the HTTP ones a null HTTP authorization
# server, an Envoy answering every request 200 with what null-authz answers:
# the same x-keyward-* headers, and the headers null-authz removes in
# x-envoy-auth-headers-to-remove (an HTTP server can send no dynamic
# metadata). The two servers' CPU is not comparable: the table's point is
# Envoy's.
ENVOY_VARIANTS=()
if [[ $VARIANTS == 1 ]]; then
  ENVOY_VARIANTS=(grpc grpc-all-headers grpc-no-metadata http http-h2)
  NULL_HTTP_AUTHZ_PORT="$(free_port)"
  cat >"$WORK/null-http-authz.yaml" <<YAML
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
static_resources:
  listeners:
    - name: authz
      address: { socket_address: { address: 127.0.0.1, port_value: $NULL_HTTP_AUTHZ_PORT } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: authz
                route_config:
                  virtual_hosts:
                    - name: authz
                      domains: ["*"]
                      routes:
                        - match: { prefix: "/" }
                          direct_response: { status: 200 }
                          response_headers_to_add:
                            - header: { key: x-keyward-key-id, value: key_01JBENCHNULLAUTHZ000000000 }
                            - header: { key: x-keyward-organization-id, value: bench }
                            - header: { key: x-keyward-scopes, value: "" }
                              keep_empty_value: true
                            - header: { key: x-envoy-auth-headers-to-remove, value: "authorization, x-keyward-workspace-id" }
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
YAML
  "$ENVOY" --mode validate -c "$WORK/null-http-authz.yaml" -l error >"$WORK/null-http-authz.yaml.validate" 2>&1 ||
    { cat "$WORK/null-http-authz.yaml.validate" >&2; die "envoy --mode validate -c null-http-authz.yaml failed"; }
  bench_start null-http-authz "$ENVOY" -c "$WORK/null-http-authz.yaml" "${ENVOY_ARGS[@]}"
  bench_wait_port "$NULL_HTTP_AUTHZ_PORT" null-http-authz

  declare -A VARIANT_AUTHZ
  for variant in "${ENVOY_VARIANTS[@]}"; do
    ENVOY_PORT[$variant]="$(free_port)"
    case "$variant" in
      grpc) envoy_config "$WORK/envoy-$variant.yaml" ext_authz "${ENVOY_PORT[$variant]}" "$NULL_AUTHZ_PORT" ;;
      grpc-*) envoy_config "$WORK/envoy-$variant.yaml" "$variant" "${ENVOY_PORT[$variant]}" "$NULL_AUTHZ_PORT" ;;
      http*) envoy_config "$WORK/envoy-$variant.yaml" "$variant" "${ENVOY_PORT[$variant]}" "$NULL_HTTP_AUTHZ_PORT" ;;
    esac
    case "$variant" in grpc*) VARIANT_AUTHZ[$variant]=null-authz ;; *) VARIANT_AUTHZ[$variant]=null-http-authz ;; esac
    bench_start "envoy-$variant" "$ENVOY" -c "$WORK/envoy-$variant.yaml" "${ENVOY_ARGS[@]}" \
      --admin-address-path "$WORK/envoy-$variant.admin"
  done
  for variant in "${ENVOY_VARIANTS[@]}"; do
    bench_wait_port "${ENVOY_PORT[$variant]}" "envoy-$variant"
    bench_h2load "envoy-$variant-check" 2 -n 20 -c 1 "${AUTH[@]}" "http://127.0.0.1:${ENVOY_PORT[$variant]}/"
    # The null servers allow everything: Envoy's own count shows that each
    # of the 20 requests was checked by ext_authz.
    checked="$(python3 - "$(cat "$WORK/envoy-$variant.admin")" <<'PY'
import sys, urllib.request
stats = urllib.request.urlopen(f"http://{sys.argv[1]}/stats?filter=ext_authz", timeout=5).read().decode()
print(sum(int(line.split(": ")[1]) for line in stats.splitlines()
          if line.startswith("http.ingress.ext_authz.ok: ")))
PY
)" || die "envoy-$variant: no admin stats"
    [[ $checked == 20 ]] || die "envoy-$variant: $checked of 20 requests went through ext_authz"
  done

  say "part 3: Envoy ext_authz variants to the null servers, h2load $ENVOY_LOAD, $ROUNDS round(s) of ${WARMUP}s warm-up + ${DURATION}s per variant"
  # Rotated order in each round, as in part 2.
  for round in $(seq "$ROUNDS"); do
    for i in "${!ENVOY_VARIANTS[@]}"; do
      variant="${ENVOY_VARIANTS[$(((i + round - 1) % ${#ENVOY_VARIANTS[@]}))]}"
      load "envoy-$variant-$round" "http://127.0.0.1:${ENVOY_PORT[$variant]}/" "$ENVOY_LOAD" \
        "envoy-$variant upstream ${VARIANT_AUTHZ[$variant]}" 2 "${AUTH[@]}"
    done
  done
  for name in null-http-authz "${ENVOY_VARIANTS[@]/#/envoy-}"; do
    bench_alive "$name"
  done
fi
UPTIME_2="$(uptime)"
PSI_2="$(head -n1 /proc/pressure/cpu 2>/dev/null || echo n/a)"

# ------------------------------------------------------------- summary
bench_summary "$WORK" "$GRPC_LOAD" "$ENVOY_LOAD" "$DURATION" "$WARMUP" "$BENCH_PIN" "$(getconf CLK_TCK)" "$QUICK" "$ROUNDS" \
  "${ENVOY_VARIANTS[*]}" <<'PY'
import sys
from h2load import latencies, median, pct, report
work, grpc_load, envoy_load, duration, warmup, pin, clk_tck, quick, rounds, variants = sys.argv[1:]
rounds = int(rounds)
variants = variants.split()  # part 3's, in order; none when it was skipped

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
print(f"the null handler, Health/Check (gRPC, h2load {grpc_load}), {rounds} round(s), req/s the mean of the rounds; "
      "protected CPU includes keyward's:")
print(head)
print(row("unprotected (`--no-auth`)", u))
print(row("protected (KeywardAuthLayer + RemoteValidator)", p))
print(f"\nreq/s per round: unprotected {', '.join(f'{x:,.0f}' for x in u['each'])}; "
      f"protected {', '.join(f'{x:,.0f}' for x in p['each'])}")
print(f"\nthroughput loss: median of rounds {loss:.1f}% (rounds {', '.join(f'{x:.1f}%' for x in sorted(losses))}) (target <= 3%: {'not judged (--quick)' if quick == '1' else 'met' if loss <= 3 else 'MISSED'}); "
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

if variants:
    settings = {
        "grpc": "as shipped: `grpc_service` (envoy_grpc), `allowed_headers` the 5 keyward reads",
        "grpc-all-headers": "without `allowed_headers`: every request header sent",
        "grpc-no-metadata": "+ `enable_dynamic_metadata_ingestion: false`",
        "http": "`http_service` (HTTP/1.1) + `allowed_headers`, `allowed_upstream_headers` x-keyward-*",
        "http-h2": "the same over HTTP/2",
    }
    authz = {name: "null-authz" if name.startswith("grpc") else "null-http-authz" for name in variants}
    by_variant = {}
    for variant in variants:
        names = [f"envoy-{variant}-{i}" for i in range(1, rounds + 1)]
        x = pooled([run(n) for n in names])
        x["envoy"] = median([server_cpu(n, f"envoy-{variant}") for n in names])
        x["authz"] = median([server_cpu(n, authz[variant]) for n in names])
        by_variant[variant] = x
    base = by_variant[variants[0]]
    print(f"\nEnvoy ext_authz variants (part 3), all to null servers (gRPC: null-authz; HTTP: an Envoy "
          f"answering 200 with the same headers), h2load {envoy_load}, {rounds} round(s), rotated order; "
          f"CPU per request is the median of the rounds, Envoy's compared with `{variants[0]}`:")
    print("| variant | Envoy settings | req/s | p50 ms | p99 ms | Envoy CPU µs/req | vs grpc | authz server CPU µs/req | requests |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        x = by_variant[variant]
        delta = x["envoy"] - base["envoy"]
        print(f"| {variant} | {settings.get(variant, '')} | {x['rps']:,.0f} | {x['p50']:.3f} | {x['p99']:.3f} | "
              f"{x['envoy']:.1f} | {delta:+.1f} ({delta / base['envoy'] * 100:+.1f}%) | {x['authz']:.1f} | {x['n']:,} |")
    cheapest = min(variants, key=lambda name: by_variant[name]["envoy"])
    print(f"\nleast Envoy CPU per request: {cheapest} ({by_variant[cheapest]['envoy']:.1f} µs"
          f"{'' if quick != '1' else '; not meaningful (--quick)'})")
PY
echo
echo "load before: $UPTIME_1 | CPU pressure: $PSI_1"
echo "load after:  $UPTIME_2 | CPU pressure: $PSI_2"
