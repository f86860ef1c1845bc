#!/usr/bin/env bash
# Run `jaxtune train` on GPUs: one machine with all its GPUs, or several machines joined by
# jax.distributed (one process per machine, each seeing all of its local GPUs).
#
# Several machines: run this script once on each, with the same flags and its own
# --process_id; or under SLURM (one task per node) where the SLURM variables supply them.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu.sh [options] -- TRAIN_FLAGS...

  TRAIN_FLAGS go to `jaxtune train` unchanged, e.g.
    -- --config=configs/sentiment_minilm.py --workdir=/shared/runs/minilm

One machine (default): one process that sees every local GPU (or those in --gpus).

Several machines, by hand: on each machine
  launch/gpu.sh --coordinator=HOST0:1234 --num_processes=N --process_id=I -- TRAIN_FLAGS
Several machines, under SLURM (one task per node; the SLURM variables supply the three):
  srun --nodes=N --ntasks-per-node=1 --gpus-per-node=8 launch/gpu.sh -- TRAIN_FLAGS
    coordinator   = first host of SLURM_JOB_NODELIST : --port (default 12355)
    num_processes = SLURM_NTASKS,  process_id = SLURM_PROCID
The workdir must be on a file system every machine shares (NFS, Lustre, gs://).

options:
  --coordinator=HOST:PORT  address of process 0 (multi-machine)
  --num_processes=N        number of processes, one per machine (multi-machine)
  --process_id=I           this machine's process, 0..N-1 (multi-machine)
  --port=PORT              coordinator port when it comes from SLURM (default 12355)
  --gpus=0,1,...           use only these local GPUs (sets CUDA_VISIBLE_DEVICES)
  --mem_fraction=F         fraction of GPU memory JAX preallocates (XLA_PYTHON_CLIENT_MEM_FRACTION)
  --dry_run                print the environment and command instead of running them
  -h, --help               this text
Environment: JAXTUNE (default: "python -m jaxtune.main") is the command that runs jaxtune.
EOF
}

coordinator="" num_processes="" process_id="" port=12355 gpus="" mem_fraction="" dry_run=0
train_flags=()
while (($#)); do
  case "$1" in
    --coordinator=*) coordinator="${1#*=}" ;;
    --num_processes=*) num_processes="${1#*=}" ;;
    --process_id=*) process_id="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --gpus=*) gpus="${1#*=}" ;;
    --mem_fraction=*) mem_fraction="${1#*=}" ;;
    --dry_run | --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_flags=("$@"); break ;;
    *) echo "launch/gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((${#train_flags[@]} == 0)); then
  echo "launch/gpu.sh: no jaxtune train flags after -- (need at least --config and --workdir)" >&2
  exit 2
fi

# First host of a SLURM node list: "gpu[003-004,007],big1" -> gpu003; "a1,a2" -> a1.
first_slurm_host() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1" | head -n 1
  elif [[ "$1" =~ ^([^,\[]+)\[([^],-]+) ]]; then
    echo "${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
  else
    echo "${1%%,*}"
  fi
}

# SLURM fills in whatever the flags left unset, when it runs more than one task.
if [[ -n "${SLURM_JOB_ID:-}" && "${SLURM_NTASKS:-1}" -gt 1 ]]; then
  if [[ -z "$coordinator" ]]; then
    nodelist="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}"
    if [[ -z "$nodelist" ]]; then
      echo "launch/gpu.sh: SLURM_JOB_ID is set but SLURM_JOB_NODELIST is not; pass --coordinator" >&2
      exit 2
    fi
    coordinator="$(first_slurm_host "$nodelist"):$port"
  fi
  num_processes="${num_processes:-$SLURM_NTASKS}"
  process_id="${process_id:-${SLURM_PROCID:?launch/gpu.sh: SLURM_PROCID is not set}}"
fi

env_vars=()
if [[ -n "$coordinator$num_processes$process_id" ]]; then
  if [[ -z "$coordinator" || -z "$num_processes" || -z "$process_id" ]]; then
    echo "launch/gpu.sh: multi-machine runs need all of --coordinator, --num_processes and" \
         "--process_id (got '$coordinator', '$num_processes', '$process_id')" >&2
    exit 2
  fi
  if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ && "$process_id" =~ ^[0-9]+$ ]] \
      || ((process_id >= num_processes)); then
    echo "launch/gpu.sh: need 0 <= --process_id < --num_processes (got $process_id, $num_processes)" >&2
    exit 2
  fi
  if [[ "$coordinator" != *:* ]]; then
    echo "launch/gpu.sh: --coordinator=$coordinator needs a port (HOST:PORT)" >&2
    exit 2
  fi
  # Read by jaxtune train (jaxtune/cli/train.py), which passes them to jax.distributed.initialize.
  env_vars+=("JAX_COORDINATOR_ADDRESS=$coordinator" "JAX_NUM_PROCESSES=$num_processes"
             "JAX_PROCESS_ID=$process_id")
fi
[[ -n "$gpus" ]] && env_vars+=("CUDA_VISIBLE_DEVICES=$gpus")
[[ -n "$mem_fraction" ]] && env_vars+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction")

read -r -a jaxtune_cmd <<<"${JAXTUNE:-python -m jaxtune.main}"
cmd=(env "${env_vars[@]}" "${jaxtune_cmd[@]}" train "${train_flags[@]}")

if ((dry_run)); then
  quoted=() q="'"
  for a in "${cmd[@]}"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then quoted+=("$a"); else quoted+=("$q${a//$q/$q\\$q$q}$q"); fi
  done
  echo "+ ${quoted[*]}"
  exit 0
fi
exec "${cmd[@]}"
