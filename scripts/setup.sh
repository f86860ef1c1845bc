#!/usr/bin/env bash
# Create (or reuse) .venv with jaxtune and its test extras, then fetch the offline assets.
# Usage: bash scripts/setup.sh [EXTRAS]   (default: test; 'base' installs no extras)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch==2.13.0 (test extra) is a local CPU wheel; an unpinned torch would pull GBs of CUDA.
if [ "$extras" = base ]; then
  python -m pip install -q -e .
else
  python -m pip install -q -e ".[${extras}]"
fi
python -m jaxtune.data.assets fetch
