#!/usr/bin/env bash
# The tweets data-quality table's runs (BENCHMARKS.md): 6 variants x 3 seeds of the 'table'
# recipe, seed-major so whole columns of the table exist early. Skips a workdir that already
# holds results.json, so a rerun finishes an interrupted series. Then:
#   python benchmarks/tweets_table.py --runs=RUNS
# Usage: benchmarks/tweets_table.sh RUNS [PYTHON] [MODS]
#   MODS: the variants added to each step's ('table', the default; 'table,pool' draws the 3,000
#   rows after the quality steps, from the whole train split)
set -u
RUNS=${1:?usage: tweets_table.sh RUNS_DIR [PYTHON] [MODS]}
PY=${2:-python}
MODS=${3:-table}
mkdir -p "$RUNS/logs"
# JAX's persistent compilation cache: every run after the first loads its compiled programs
# (the same shapes) instead of spending minutes of a shared CPU compiling them again.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$RUNS/jax_cache}
for s in 0 1 2; do
  for v in raw clean dedup confidence label_errors balance; do
    w="$RUNS/$v/$s"
    [ -f "$w/results.json" ] && continue
    start=$(date +%s)
    "$PY" -m jaxtune.main train --config="configs/tweets_minilm.py:$v,$MODS" --workdir="$w" \
      --config.seed="$s" > "$RUNS/logs/${v}_$s.log" 2>&1
    echo "$v $s rc=$? wall_s=$(( $(date +%s) - start ))" | tee -a "$RUNS/logs/wall.txt"
  done
done
