#!/usr/bin/env bash
# Prepare a fresh Debian machine for hubbub: system packages, a virtualenv, and exactly the
# dependency versions of uv.lock (hash-checked), plus the package itself (editable).
#   scripts/setup.sh             runtime only
#   scripts/setup.sh --loadtest  also the load generators and plots (hubbub loadtest / bench)
#   scripts/setup.sh --dev       also the test and lint tools, the load-test extra and chromium
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
case "$mode" in
  "" | --dev | --loadtest) ;;
  *) echo "usage: scripts/setup.sh [--dev|--loadtest]" >&2; exit 2 ;;
esac

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ "$mode" = --dev ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]} with apt" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# uv itself comes pinned by hash; it then installs what uv.lock says, nothing newer.
uv=.venv/bin/uv
if [ ! -x "$uv" ] || [ scripts/uv-requirements.txt -nt "$uv" ]; then
  echo "setup: installing uv into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
    -r scripts/uv-requirements.txt
  touch "$uv"
fi
extras=()
[ "$mode" = --loadtest ] && extras=(--extra loadtest)
[ "$mode" = --dev ] && extras=(--extra loadtest --extra dev)
# --frozen: never re-resolve, install the lock as committed; --inexact: keep what a fuller
# install added, so ./run.sh after ./test.sh installs and removes nothing.
UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never \
  "$uv" sync --frozen --inexact --quiet "${extras[@]}"
