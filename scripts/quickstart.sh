#!/usr/bin/env bash
# One command from a fresh clone to a running keyward on the embedded SQLite
# default (./keyward.db), with an admin key for organization "demo":
#
#   bash scripts/quickstart.sh
#
# On the first start it bootstraps the admin key and prints it once (keyward
# stores only its hash). Then it serves on 127.0.0.1:50051 until Ctrl-C.
# KEYWARD_ORGANIZATION changes the organization; KEYWARD_BIN skips the build
# and uses that binary; any other KEYWARD_* setting is passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${KEYWARD_BIN:-}" ]]; then
  cargo build --release --bin keyward >&2
  KEYWARD_BIN=target/release/keyward
fi
organization="${KEYWARD_ORGANIZATION:-demo}"
database="${KEYWARD_DATABASE_URL:-sqlite://keyward.db?mode=rwc}"

if [[ "$database" == sqlite://keyward.db* && -e keyward.db ]]; then
  echo "keyward.db exists: keeping its keys. Lost your admin key? Make another with:" >&2
  echo "  $KEYWARD_BIN bootstrap --organization $organization" >&2
else
  key="$("$KEYWARD_BIN" bootstrap --database-url "$database" --organization "$organization")"
  cat <<BANNER

  Your admin key for organization "$organization" (shown once, keep it safe):

    $key

  Try it, in another terminal (the admin CLI reads the key from the
  environment, so paste it at the prompt):
    read -rsp 'admin key: ' KEYWARD_ADMIN_KEY && export KEYWARD_ADMIN_KEY
    $KEYWARD_BIN keys list
  or with grpcurl:
    grpcurl -plaintext -H "authorization: Bearer $key" \\
      127.0.0.1:50051 keyward.v1.KeyAdminService/ListKeys

BANNER
fi
exec "$KEYWARD_BIN" serve --database-url "$database"
