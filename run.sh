#!/usr/bin/env bash
# Set up (first run) and start a local hubbub cluster: embedded Redis, 2 gateways, a shard per core.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec hubbub up "$@"
