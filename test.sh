#!/usr/bin/env bash
# Set up (first run) and run the checks: ruff, mypy --strict, the default suite, then the
# real-browser suite (Debian chromium).
#   ./test.sh                 everything CI runs
#   ./test.sh -m slow         other pytest arguments: run only that selection
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
mypy hubbub gateway shards registry loadtest tests
if [ "$#" -gt 0 ]; then
  exec pytest "$@"
fi
pytest
pytest -m browser
