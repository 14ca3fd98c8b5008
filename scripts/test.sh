#!/usr/bin/env bash
# The project's test command (CI runs exactly this; so does the README):
#   bash scripts/test.sh
# Installs the external tools the tests use (idempotent, fast when present),
# then runs the whole workspace's tests. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh
# envoy, grpcurl (and buf) on PATH for the end-to-end tests.
# shellcheck source=scripts/env.sh
source scripts/env.sh

echo "==== cargo test --workspace --all-features"
cargo test --workspace --all-features

# ---- later steps go here (each must fail the script on failure) -------------
# e.g. end-to-end checks with the real keyward binary, envoy and grpcurl.
# Keep cargo test's `test result:` lines as the last test-runner output, or
# end with a plain 'N passed, N failed' line.
