#!/usr/bin/env bash
# Set up a fresh environment and run the whole test suite on the CPU (2 workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
exec python -m pytest -n 2 --dist loadfile -q "$@"
