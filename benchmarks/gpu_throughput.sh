#!/usr/bin/env bash
# The GPU throughput goals (issue 8) in one command, for a short lease of a GPU machine:
#   1. the machine: GPU, driver, package versions (a lent machine brings its own jax/torch);
#   2. a small smoke run of both sides, so a broken setup costs seconds, not the whole lease;
#      when it fails it is retried without jaxtune's XLA flags (a newer XLA may drop one), then
#      with the flax wheel carried in .whl (a different flax may change an nnx API);
#   3. Llama 3.2 1B full fine-tune, batch 8 x seq 2048, torch vs jax (+ the step's breakdown),
#      then jax alone with the old loss chunk (256 positions) against the current choice;
#   4. Llama 3 8B LoRA r16, batch 1 x seq 4096, remat full, torch (PEFT) vs jax.
# Each part has a time cap inside one overall deadline (DEADLINE_S, default 560 s), so a hang in
# one part leaves the others' figures. Everything goes to $OUT: log.txt, one JSON per run, and
# sides.log (every side's own output with its phase timings, kept even when a side is killed).
#
#   bash benchmarks/gpu_throughput.sh                 # on the GPU machine, from the repo root
#   PARTS="smoke 1b" bash benchmarks/gpu_throughput.sh
#
# Packages missing on the machine travel as wheels in .whl (pip download ... -d .whl): the
# script installs ml_collections from there when `import ml_collections` fails.
set -u
OUT=${OUT:-/tmp/gpu_throughput}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
start=$(date +%s)
deadline=$((start + ${DEADLINE_S:-560}))
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
parts=${PARTS:-"smoke 1b 8b"}

left() { echo $((deadline - $(date +%s))); }
capped() {  # capped SECONDS CMD...: run CMD for at most SECONDS, never past the deadline
  local cap=$1 l
  shift
  l=$(left)
  ((l < cap)) && cap=$l
  if ((cap < 20)); then echo "SKIPPED (deadline): $*"; return 124; fi
  echo "+ [$(($(date +%s) - start)) s, cap ${cap} s] $*"
  timeout "$cap" "$@"
}

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
if ! $PY -c "import ml_collections" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/ml_collections*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
$PY - <<'EOF'
import importlib.metadata as md
names = ("jax jaxlib jax-cuda13-plugin jax-cuda12-plugin flax optax orbax-checkpoint ml_collections "
         "torch transformers peft numpy").split()
def version(n):
  try:
    return md.version(n)
  except md.PackageNotFoundError:
    return "-"
print(" ".join(f"{n}={version(n)}" for n in names))
import jax
print("jax devices:", jax.devices())
EOF

# Each side's own output, phase timings included, lands in sides.log as it runs.
bench() {
  capped "$1" $PY benchmarks/train_throughput.py --device "${DEVICE:-gpu}" --side-log "$OUT/sides.log" "${@:2}"
}

if [[ " $parts " == *" smoke "* ]]; then
  echo "== smoke: a 2-layer llama, both sides"
  smoke() {
    bench 150 --layers 2 --hidden 512 --heads 8 --kv-heads 2 --intermediate 1024 --vocab 32000 \
      --seq 512 --batch 4 --steps 3 --warmup 2 --sides torch,jax --json-out "$OUT/smoke.json"
  }
  ok() { $PY -c "import json,sys; s=json.load(open('$OUT/smoke.json'))['sides']; sys.exit(any('error' in r for r in s.values()))" 2>/dev/null; }
  smoke
  if ! ok; then
    echo "== smoke failed: again without jaxtune's XLA flags"
    export JAXTUNE_NO_XLA_FLAGS=1
    smoke
  fi
  if ! ok && ls .whl/flax-*.whl >/dev/null 2>&1; then
    echo "== smoke failed: again with the carried flax (and jaxtune's XLA flags)"
    unset JAXTUNE_NO_XLA_FLAGS
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/flax .whl/flax-*.whl
    export PYTHONPATH="/tmp/flax:$PYTHONPATH"
    smoke
  fi
  ok || echo "== smoke still failing; the runs below will show the same error"
fi

if [[ " $parts " == *" 1b "* ]]; then
  echo "== 1B full fine-tune, bf16 compute, f32 master weights"
  bench 260 --model 1b --seq 2048 --batch 8 --steps 10 --warmup 3 --sides torch,jax --breakdown \
    --json-out "$OUT/1b.json"
  echo "== 1B again, jax with the loss chunk of 256 positions it had before 2026-11-30"
  bench 120 --model 1b --seq 2048 --batch 8 --steps 10 --warmup 3 --sides jax --lm-loss-chunk 256 \
    --json-out "$OUT/1b_chunk256.json"
fi

if [[ " $parts " == *" 8b "* ]]; then
  echo "== 8B LoRA r16, remat full"
  bench 300 --model 8b --seq 4096 --batch 1 --lora-rank 16 --remat full --steps 5 --warmup 2 \
    --sides torch,jax --json-out "$OUT/8b_lora.json"
fi
echo "== done in $(($(date +%s) - start)) s"
