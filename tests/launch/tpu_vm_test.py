"""launch/tpu_vm.sh: its dry-run commands, and its restart loop against a fake gcloud (no cloud)."""

import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "tpu_vm.sh"
VM = ["--name=tune1", "--zone=us-central2-b", "--accelerator=v4-32"]
TRAIN = ["--config=configs/sentiment_minilm.py:quick", "--workdir=gs://bucket/runs/minilm",
         "--config.optim.learning_rate=2e-5"]


def run_script(*args, env=None):
  return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                        timeout=60)


def commands(stdout):
  """The printed commands ('+ ...' lines) as argument lists."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote(cmd):
  """The --command=... of a `gcloud ... ssh` command."""
  (arg,) = [a for a in cmd if a.startswith("--command=")]
  return arg.removeprefix("--command=")


def test_help_lists_options():
  out = run_script("--help")
  assert out.returncode == 0
  for option in ("--name", "--zone", "--accelerator", "--spot", "--dry_run", "--max_restarts"):
    assert option in out.stdout


def test_dry_run_creates_installs_and_trains_on_all_workers():
  out = run_script(*VM, "--spot", "--dry_run", "--", *TRAIN)
  assert out.returncode == 0, out.stderr
  create, install, train, describe = commands(out.stdout)
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tune1"]
  assert "--accelerator-type=v4-32" in create and "--spot" in create
  assert "--zone=us-central2-b" in create
  for cmd in (install, train):
    assert cmd[4:6] == ["ssh", "tune1"] and "--worker=all" in cmd
  assert "pip install" in remote(install) and "gcsfs" in remote(install)
  assert remote(install).endswith("python3 -m jaxtune.data.assets fetch")
  # The train command reaches every worker intact and joins jax.distributed.
  head, _, flags = remote(train).partition(" python3 -m jaxtune.main train ")
  assert "JAXTUNE_DISTRIBUTED=1" in head
  assert shlex.split(flags) == TRAIN
  assert describe[4] == "describe" and "--format=value(state)" in describe
  assert "PREEMPTED" in out.stdout and "resumes" in out.stdout


def test_dry_run_without_spot_and_with_local_source(tmp_path):
  out = run_script(*VM, f"--source={tmp_path}", "--dry_run", "--", *TRAIN)
  assert out.returncode == 0, out.stderr
  cmds = commands(out.stdout)
  assert "--spot" not in cmds[0]
  assert cmds[1][0] == "tar" and str(tmp_path) in cmds[1]
  assert cmds[2][4] == "scp" and "--worker=all" in cmds[2]


@pytest.mark.parametrize("missing", ["--name=tune1", "--zone=us-central2-b"])
def test_refuses_missing_required_option(missing):
  args = [a for a in VM if a != missing]
  out = run_script(*args, "--dry_run", "--", *TRAIN)
  assert out.returncode == 2
  assert missing.split("=")[0] in out.stderr


def test_refuses_empty_train_flags():
  out = run_script(*VM, "--dry_run")
  assert out.returncode == 2 and "--config" in out.stderr


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A fake gcloud: logs each call; the VM state lives in $STATE; train runs follow $PLAN.
echo "$*" >> "$LOG"
verb="$4"
case "$verb" in
  describe) s=$(cat "$STATE"); [[ "$s" == MISSING ]] && exit 1; echo "$s" ;;
  create) echo READY > "$STATE" ;;
  delete) echo MISSING > "$STATE" ;;
  ssh)
    [[ "$*" == *"jaxtune.main train"* ]] || exit 0
    outcome=$(head -n 1 "$PLAN"); sed -i 1d "$PLAN"
    case "$outcome" in
      ok) exit 0 ;;
      preempt) echo PREEMPTED > "$STATE"; exit 1 ;;
      drop) exit 255 ;;
      error) exit 3 ;;
    esac ;;
esac
"""


def run_loop(tmp_path, plan, state="MISSING", extra=()):
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  (tmp_path / "state").write_text(state + "\n")
  (tmp_path / "plan").write_text("\n".join(plan) + "\n")
  env = {"PATH": "/usr/bin:/bin", "GCLOUD": str(gcloud), "LOG": str(tmp_path / "log"),
         "STATE": str(tmp_path / "state"), "PLAN": str(tmp_path / "plan")}
  out = run_script(*VM, "--spot", *extra, "--", *TRAIN, env=env)
  verbs = [line.split()[3] + (":train" if "jaxtune.main train" in line else "")
           for line in (tmp_path / "log").read_text().splitlines()]
  return out, [v for v in verbs if v != "describe"]


def test_preemption_recreates_the_vm_and_reruns_the_same_command(tmp_path):
  out, verbs = run_loop(tmp_path, ["preempt", "ok"])
  assert out.returncode == 0, out.stderr
  assert verbs == ["create", "ssh", "ssh:train", "delete", "create", "ssh", "ssh:train"]
  trains = [line for line in (tmp_path / "log").read_text().splitlines() if "main train" in line]
  assert trains[0] == trains[1]  # same command on the same workdir: the second run resumes
  assert "restart 1 of 20" in out.stderr


def test_lost_connection_reruns_without_recreating(tmp_path):
  out, verbs = run_loop(tmp_path, ["drop", "ok"], state="READY")
  assert out.returncode == 0, out.stderr
  assert verbs == ["ssh", "ssh:train", "ssh:train"]


def test_a_real_error_on_a_healthy_vm_is_not_retried(tmp_path):
  out, verbs = run_loop(tmp_path, ["error", "ok"], state="READY")
  assert out.returncode == 3
  assert verbs == ["ssh", "ssh:train"]
  assert "not retrying" in out.stderr


def test_gives_up_after_max_restarts(tmp_path):
  out, verbs = run_loop(tmp_path, ["preempt", "preempt", "ok"], extra=["--max_restarts=1"])
  assert out.returncode == 1
  assert verbs.count("ssh:train") == 2 and "gave up after 1 restarts" in out.stderr
