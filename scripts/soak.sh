#!/usr/bin/env bash
# Soak test (RELIABILITY.md): two `keyward serve` replicas on one fresh
# PostgreSQL database (127.0.0.1:5432, user postgres, or
# KEYWARD_TEST_POSTGRES_URL), each behind its own TCP proxy, under a mixed
# load of validations (active, denied and never-issued keys) and admin
# mutations (create, revoke, archive, reactivate, rotate), with one 10 s
# database blackhole in the middle. Prints a report (requests, errors by
# gRPC code, wrong verdicts, each replica's RSS at start/middle/end) and
# exits non-zero on any wrong verdict or if a replica dies.
#   bash scripts/soak.sh [--duration SECONDS] [--release] [driver options]
# Default 600 s. CI: bash scripts/soak.sh --duration 60
# Builds keyward and the driver (examples/soak.rs) in the debug profile,
# or in release with --release. Other options go to the driver (see
# `cargo run --example soak -- --help`: --blackhole, --rate, --admin-rate).
# Replica logs: target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
cargo_profile=()
driver_args=()
duration=600
while [ $# -gt 0 ]; do
  case "$1" in
    --release)
      profile=release
      cargo_profile=(--release)
      ;;
    --duration)
      duration="${2:?--duration needs a number of seconds}"
      shift
      ;;
    --duration=*) duration="${1#--duration=}" ;;
    *) driver_args+=("$1") ;;
  esac
  shift
done
if ! [[ "$duration" =~ ^[0-9]+$ ]] || [ "$duration" -lt 1 ]; then
  echo "usage: scripts/soak.sh [--duration SECONDS] [--release] [driver options]" >&2
  exit 2
fi

echo "==== building keyward and the soak driver ($profile)"
cargo build "${cargo_profile[@]}" --bin keyward --example soak

echo "==== soak: ${duration}s"
exec "target/$profile/examples/soak" \
  --duration "$duration" \
  --keyward "target/$profile/keyward" \
  --logs target/soak \
  "${driver_args[@]}"
