"""launch/gpu.sh: its dry-run command for one and several machines, SLURM mapping, and that the
environment it sets is what `jaxtune train` passes to jax.distributed.initialize."""

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from jaxtune import distributed

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "gpu.sh"
TRAIN = ["--config=configs/sft_smollm2.py:quick", "--workdir=/shared/runs/sft",
         "--config.data.text_column=it's"]


def dry_run(*args, env_extra=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env["PATH"] = "/usr/bin:/bin"  # no scontrol: the script parses the node list itself
  env.update(env_extra or {})
  out = subprocess.run(["bash", str(SCRIPT), *args, "--dry_run", "--", *TRAIN],
                       capture_output=True, text=True, env=env, timeout=60)
  if out.returncode != 0:
    return out, None, None
  (line,) = [x for x in out.stdout.splitlines() if x.startswith("+ ")]
  cmd = shlex.split(line[2:])
  assert cmd[0] == "env"
  i = cmd.index("python")
  variables = dict(a.split("=", 1) for a in cmd[1:i])
  assert cmd[i:i + 4] == ["python", "-m", "jaxtune.main", "train"]
  assert cmd[i + 4:] == TRAIN
  return out, variables, cmd


def test_help():
  out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
  assert out.returncode == 0
  for word in ("--coordinator", "--num_processes", "--process_id", "SLURM", "--dry_run"):
    assert word in out.stdout


def test_one_machine_is_one_process_over_all_gpus():
  _, variables, _ = dry_run()
  assert variables == {}
  assert distributed.distributed_args(variables) is None


def test_one_machine_with_chosen_gpus():
  _, variables, _ = dry_run("--gpus=0,1", "--mem_fraction=0.9")
  assert variables == {"CUDA_VISIBLE_DEVICES": "0,1", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}


def test_several_machines_by_hand():
  _, variables, _ = dry_run("--coordinator=10.0.0.2:1234", "--num_processes=4", "--process_id=3")
  assert variables == {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
                       "JAX_PROCESS_ID": "3"}
  assert distributed.distributed_args(variables) == {
    "coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3,
    "cluster_detection_method": "deactivate"}


@pytest.mark.parametrize("nodelist, host", [
  ("gpu[003-004,007],big1", "gpu003"), ("a1,a2", "a1"), ("node[12]", "node12")])
def test_slurm_variables_map_to_jax_distributed(nodelist, host):
  slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "3", "SLURM_PROCID": "2",
           "SLURM_JOB_NODELIST": nodelist}
  _, variables, _ = dry_run(env_extra=slurm)
  assert variables == {"JAX_COORDINATOR_ADDRESS": f"{host}:12355", "JAX_NUM_PROCESSES": "3",
                       "JAX_PROCESS_ID": "2"}
  # With SLURM variables also present, the explicit ones win and detection stays off, so the
  # process keeps every GPU of its node.
  args = distributed.distributed_args({**slurm, **variables})
  assert args["process_id"] == 2 and args["cluster_detection_method"] == "deactivate"


def test_flags_override_slurm():
  slurm = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
           "SLURM_JOB_NODELIST": "n[1-2]"}
  _, variables, _ = dry_run("--coordinator=head:9", "--port=1", env_extra=slurm)
  assert variables["JAX_COORDINATOR_ADDRESS"] == "head:9"


def test_single_task_slurm_job_is_single_process():
  _, variables, _ = dry_run(env_extra={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1",
                                       "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"})
  assert variables == {}


@pytest.mark.parametrize("args, message", [
  (["--coordinator=h:1"], "need all of"),
  (["--coordinator=h:1", "--num_processes=2", "--process_id=2"], "process_id <"),
  (["--coordinator=h", "--num_processes=2", "--process_id=0"], "needs a port"),
  (["--bogus"], "unknown option --bogus"),
])
def test_refuses_bad_flags(args, message):
  out, _, _ = dry_run(*args)
  assert out.returncode == 2 and message in out.stderr


def test_distributed_args_from_launchers():
  assert distributed.distributed_args({}) is None
  assert distributed.distributed_args({"JAXTUNE_DISTRIBUTED": "1"}) == {}  # launch/tpu_vm.sh
  assert distributed.distributed_args({"TPU_WORKER_HOSTNAMES": "a,b"}) == {}
  assert distributed.distributed_args({"SLURM_NTASKS": "8"}) == {}  # srun, one task per GPU


@pytest.mark.slow
def test_two_processes_train_together_through_jax_distributed(tmp_path):
  """The multi-machine path on one machine: two CPU processes, one coordinator."""
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("SLURM_")}
  env["JAX_PLATFORMS"] = "cpu"  # one device per process: the mesh spans both processes
  flags = ["--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--config.train.steps=12",
           "--config.train.progress=False"]
  procs = [subprocess.Popen(
    ["bash", str(SCRIPT), f"--coordinator=localhost:{port}", "--num_processes=2",
     f"--process_id={i}", "--", *flags], cwd=REPO, env=env, text=True,
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outs = [p.communicate(timeout=500)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  # Both processes computed the same global result: the same summary table (after the first
  # line, which has each process's wall time).
  finals = [out[out.index("done: step 12"):].splitlines()[1:] for out in outs]
  assert finals[0] == finals[1] and any("loss" in x for x in finals[0]), outs
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [10, 12]  # process 0 wrote, once
