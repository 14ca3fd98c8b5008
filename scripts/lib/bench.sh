# shellcheck shell=bash
# What scripts/bench-*.sh share; sourced, never run:
#
#   cd "$(dirname "$0")/.."
#   source scripts/lib/bench.sh NAME "$@"
#
# NAME prefixes every message. The script's arguments are parsed here:
# --quick sets QUICK=1, -h/--help prints the script's header comment; any
# other argument is an error. Afterwards the script has
#   ROOT, QUICK, WORK (a temporary directory, removed on exit unless
#   BENCH_KEEP=1), SERVER_CPU / LOAD_CPU (taskset prefixes, see BENCH_PIN),
# and the functions below. Every process started with bench_start is stopped
# on exit, however the script ends; then the functions given to bench_at_exit
# run.
#
# One way to pass prebuilt binaries, for every bench script:
#   KEYWARD_BIN=PATH   use this keyward binary and build nothing; a script
#                      that also needs null-service, null-authz and
#                      bench_upstream (or orders-service and the accuracy
#                      driver) takes them next to it: DIR/null-service,
#                      DIR/null-authz and DIR/examples/bench_upstream (or
#                      DIR/orders-service and DIR/accuracy) (`cargo build
#                      --bins --examples` or `cargo test` puts them there;
#                      for figures, build them apart from keyward, as
#                      bench_build does: see there).
#   BENCH_PIN=1|0      pin servers to CPU 0 and h2load to CPU 1 (default: 1
#                      with 2+ CPUs and taskset)
#   BENCH_KEEP=1       keep the temporary directory (logs, h2load reports)
#
# Any failure ends the script with a non-zero status: a step that fails, a
# server that exits, and an h2load run with any request that did not succeed
# (h2load itself exits 0 then). Percentiles are nearest-rank
# (scripts/lib/h2load.py, which the summaries import).

BENCH_NAME="$1"
shift
ROOT="$(pwd)"
QUICK=0
for _bench_arg in "$@"; do
  case "$_bench_arg" in
    --quick) QUICK=1 ;;
    -h | --help)
      awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
      exit 0
      ;;
    *) echo "$BENCH_NAME: unknown argument $_bench_arg (try --help)" >&2; exit 2 ;;
  esac
done
unset _bench_arg

say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

if [[ -z "${BENCH_PIN:-}" ]]; then
  if [[ "$(nproc)" -ge 2 ]] && command -v taskset >/dev/null 2>&1; then BENCH_PIN=1; else BENCH_PIN=0; fi
fi
SERVER_CPU=()
LOAD_CPU=()
if [[ "$BENCH_PIN" == 1 ]]; then
  SERVER_CPU=(taskset -c 0)
  LOAD_CPU=(taskset -c 1)
fi

# ------------------------------------------------------- processes, cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyward-$BENCH_NAME.XXXXXX")"
PIDS=()
declare -A PID_OF
_BENCH_AT_EXIT=()
_bench_cleanup() {
  local pid hook
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for hook in "${_BENCH_AT_EXIT[@]}"; do "$hook" || true; done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap _bench_cleanup EXIT
trap 'exit 130' INT TERM

# bench_at_exit FUNCTION: runs FUNCTION on exit, after every server stopped
# (e.g. to drop a database they used).
bench_at_exit() {
  _BENCH_AT_EXIT+=("$1")
}

# bench_start NAME COMMAND...: runs a server in the background (on the server
# CPU), its output in $WORK/NAME.log; PID_OF[NAME] is its process id.
bench_start() {
  local name="$1"
  shift
  "${SERVER_CPU[@]}" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  PID_OF[$name]=$!
}

# bench_alive NAME: fails the script if that server has exited.
bench_alive() {
  kill -0 "${PID_OF[$1]}" 2>/dev/null || { cat "$WORK/$1.log" >&2; die "$1 exited"; }
}

# free_port: a port free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_wait_port PORT NAME: until server NAME accepts on 127.0.0.1:PORT (30 s).
bench_wait_port() {
  local _
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    bench_alive "$2"
    sleep 0.1
  done
  cat "$WORK/$2.log" >&2
  die "$2 did not listen on 127.0.0.1:$1 within 30 s"
}

# ----------------------------------------------------------- binaries, tools
# bench_build keyward|auth|accuracy: sets KEYWARD; with `auth` also
# NULL_SERVICE (benches/null-service), NULL_AUTHZ (benches/null-authz) and
# UPSTREAM (examples/bench_upstream); with `accuracy` also ORDERS
# (orders-service) and ACCURACY (the
# driver of benches/load-driver). Without
# KEYWARD_BIN it builds them: release, or with --quick debug binaries with
# --all-features, as the test suite.
bench_build() {
  local dir
  if [[ -n "${KEYWARD_BIN:-}" ]]; then
    KEYWARD="$(realpath -e "$KEYWARD_BIN")" || die "KEYWARD_BIN=$KEYWARD_BIN missing"
    dir="$(dirname "$KEYWARD")"
  else
    # keyward, then the services beside it in a build of their own: built
    # together, cargo would unify their dependencies' features with
    # keyward's (sea-orm turns on tracing's `log`, which costs a process
    # without a tracing subscriber thousands of instructions per call), and
    # they would not be the binaries their users build.
    local others=()
    case "$1" in
      auth) others=(-p null-service -p null-authz) ;;
      accuracy) others=(-p orders-service -p load-driver) ;;
    esac
    local build=(cargo build --all-features --bins)
    dir="$ROOT/target/debug"
    if [[ $QUICK == 1 ]]; then
      say "building keyward ${others[*]} (debug)"
    else
      build=(cargo build --release --bins)
      dir="$ROOT/target/release"
      say "building keyward ${others[*]} (release; slow the first time)"
    fi
    "${build[@]}" -p keyward >&2
    if ((${#others[@]})); then
      "${build[@]}" "${others[@]}" >&2
    fi
    if [[ "$1" == auth ]]; then
      # std-only, compiled directly: `cargo build --example` would also build
      # the root package's dev-dependencies (and unify their features).
      mkdir -p "$dir/examples"
      rustc --edition 2021 -C opt-level=3 --crate-name bench_upstream \
        -o "$dir/examples/bench_upstream" examples/bench_upstream.rs >&2
    fi
    KEYWARD="$dir/keyward"
  fi
  local bins=("$KEYWARD")
  case "$1" in
    auth)
      NULL_SERVICE="$dir/null-service"
      UPSTREAM="$dir/examples/bench_upstream"
      NULL_AUTHZ="$dir/null-authz"
      bins+=("$NULL_SERVICE" "$UPSTREAM" "$NULL_AUTHZ")
      ;;
    accuracy)
      ORDERS="$dir/orders-service"
      ACCURACY="$dir/accuracy"
      bins+=("$ORDERS" "$ACCURACY")
      ;;
  esac
  local bin
  for bin in "${bins[@]}"; do
    [[ -x "$bin" ]] || die "$bin missing (build it: cargo build --bins --examples; or unset KEYWARD_BIN)"
  done
}

# bench_tools: installs the tools (scripts/install-tools.sh), puts them on
# PATH and sets ENVOY and GRPCURL (the real binaries when installed).
bench_tools() {
  bash scripts/install-tools.sh >"$WORK/install-tools.log" 2>&1 ||
    { cat "$WORK/install-tools.log" >&2; die "scripts/install-tools.sh failed"; }
  # shellcheck source=scripts/env.sh
  source scripts/env.sh
  # shellcheck disable=SC2034 # for the scripts that source this file
  ENVOY="${KEYWARD_ENVOY_BIN:-$(command -v envoy)}" || die "envoy missing"
  GRPCURL="${KEYWARD_GRPCURL_BIN:-$(command -v grpcurl)}" || die "grpcurl missing"
  command -v h2load >/dev/null || die "h2load missing"
}

# ------------------------------------------------------------------ keyward
# bench_bootstrap DATABASE-URL: bootstraps an admin key of organization
# `bench` into ADMIN.
bench_bootstrap() {
  ADMIN="$("$KEYWARD" bootstrap --database-url "$1" --organization bench 2>"$WORK/bootstrap.log")" ||
    { cat "$WORK/bootstrap.log" >&2; die "keyward bootstrap failed"; }
}

# bench_keyward DATABASE-URL: bench_bootstrap, then bench_serve keyward on
# that database; KEYWARD_PORT is its port.
bench_keyward() {
  bench_bootstrap "$1"
  bench_serve keyward "$1"
  KEYWARD_PORT="${PORT_OF[keyward]}"
}

# bench_serve NAME DATABASE-URL [SERVE-FLAGS...]: starts `keyward serve` as
# server NAME (bench_start) on a free 127.0.0.1 port, PORT_OF[NAME], with any
# extra flags (e.g. --tls-cert/--tls-key), and waits until it listens. Several
# may serve one database (a second one on the same SQLite file: no bootstrap).
declare -A PORT_OF
bench_serve() {
  local name="$1" url="$2"
  shift 2
  PORT_OF[$name]="$(free_port)"
  bench_start "$name" env RUST_LOG=warn "$KEYWARD" serve --database-url "$url" \
    --listen "127.0.0.1:${PORT_OF[$name]}" "$@"
  bench_wait_port "${PORT_OF[$name]}" "$name"
}

# bench_create_key NAME [JSON-FIELDS]: CreateKey (orders:read, orders:write,
# plus any extra request fields, e.g. '"rate_limits": [...]') with ADMIN;
# sets KEY to the new standard key.
bench_create_key() {
  local created extra="${2:+, $2}"
  created="$("$GRPCURL" -plaintext -H "authorization: Bearer $ADMIN" \
    -d "{\"name\": \"$1\", \"scopes\": [\"orders:read\", \"orders:write\"]$extra}" \
    "127.0.0.1:$KEYWARD_PORT" keyward.v1.KeyAdminService/CreateKey)" || die "CreateKey failed"
  KEY="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["secret"])' "$created")"
  [[ "$KEY" == sk_live_* ]] || die "CreateKey returned no standard key"
}

# bench_start_null_services [LAUNCHER [ARGS...]]: the null handler
# (benches/null-service) protected by keyward (at KEYWARD_PORT), with ARGS
# added, and the same without the layer, as servers null-protected and
# null-unprotected on free ports PROTECTED_PORT and UNPROTECTED_PORT, each
# started by LAUNCHER NAME COMMAND... (default bench_start); waiting for
# them is the caller's. The protected one requires orders:read
# (bench_create_key's keys hold it) of live keys.
bench_start_null_services() {
  local launch="${1:-bench_start}"
  shift || true
  PROTECTED_PORT="$(free_port)"
  UNPROTECTED_PORT="$(free_port)"
  "$launch" null-protected "$NULL_SERVICE" --keyward-url "http://127.0.0.1:$KEYWARD_PORT" \
    --listen "127.0.0.1:$PROTECTED_PORT" "$@"
  "$launch" null-unprotected "$NULL_SERVICE" --no-auth --listen "127.0.0.1:$UNPROTECTED_PORT"
}

# The null handler's route, and its request as gRPC frames it: 0x00 (not
# compressed), a zero length, an empty HealthCheckRequest. Its answer is
# 2 bytes (status SERVING); a gRPC error is a 200 with no body.
NULL_CHECK=/grpc.health.v1.Health/Check
NULL_CHECK_BYTES=2
bench_null_check_body() {
  printf '\x00\x00\x00\x00\x00' >"$1"
}

# ------------------------------------------------------------------- h2load
# bench_h2load NAME MIN-BYTES H2LOAD-ARGS...: one h2load run (on the load
# CPU), its report in $WORK/NAME.out; fails the script unless every request
# succeeded with at least MIN-BYTES of response body each.
bench_h2load() {
  local name="$1" min="$2" why status=0
  shift 2
  "${LOAD_CPU[@]}" h2load "$@" >"$WORK/$name.out" 2>&1 || status=$?
  if [[ $status != 0 ]]; then
    cat "$WORK/$name.out" >&2
    die "h2load $name exited with status $status"
  fi
  why="$(python3 scripts/lib/h2load.py check "$WORK/$name.out" "$min" 2>&1)" ||
    { cat "$WORK/$name.out" >&2; die "h2load $name: $why"; }
}

# bench_summary ARGS... < PROGRAM: runs a Python summary with
# scripts/lib/h2load.py importable (`from h2load import ...`).
bench_summary() {
  PYTHONPATH="$ROOT/scripts/lib${PYTHONPATH:+:$PYTHONPATH}" python3 - "$@"
}
