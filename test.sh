#!/usr/bin/env bash
# Set up (first run) and run the checks: ruff, mypy --strict, then the test suite.
#   ./test.sh                 lint, types and the default suite
#   ./test.sh -m slow         extra pytest arguments are passed through
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
mypy hubbub gateway shards registry loadtest
pytest "$@"
