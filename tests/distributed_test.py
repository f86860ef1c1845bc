"""Multi-process runs: two CPU processes joined through jax.distributed on localhost are
preempted, resume and export as one run does (which arguments a launch implies: launch/gpu_test.py).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

pytestmark = pytest.mark.slow  # end to end: three runs of two `jaxtune train` processes

REPO = Path(__file__).resolve().parents[1]
STEPS = 40
TIMEOUT_S = 150  # per run of both processes: a hang in a collective fails, not blocks CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class TwoProcesses:
  """`jaxtune train` as processes 0 and 1 of one jax.distributed run (2 fake CPU devices each,
  so 4 in the mesh), output to workdir/../<name>.<process>.log."""

  def __init__(self, workdir: Path, name: str, *extra: str):
    port = _free_port()
    # Runs after the first load their programs from this cache instead of compiling again.
    cache = workdir.parent / "jax_cache"
    self.logs = [workdir.parent / f"{name}.{i}.log" for i in range(2)]
    cmd = [sys.executable, "-m", "jaxtune.main", "train", f"--config={REPO}/configs/tiny.py",
           f"--workdir={workdir}", "--config.train.progress=False", f"--config.train.steps={STEPS}",
           "--config.train.batch_size=8", "--config.train.eval_every=0",
           # Parameters sharded over both processes: the export must gather them from both.
           "--config.mesh.data=1", "--config.mesh.fsdp=4", *extra]
    self.procs = []
    for i in range(2):
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                 XLA_FLAGS="--xla_force_host_platform_device_count=2",
                 JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i), JAX_COMPILATION_CACHE_DIR=str(cache),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
      with open(self.logs[i], "w") as log:
        self.procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log,
                                           stderr=subprocess.STDOUT))

  def wait(self) -> list[int]:
    """Both exit codes; kills both and fails if either is still running after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
      for p in self.procs:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pytest.fail(f"hung: a process still ran after {TIMEOUT_S} s\n{self.output()}")
    finally:
      for p in self.procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    return [p.returncode for p in self.procs]

  def output(self, i: int | None = None) -> str:
    if i is not None:
      return self.logs[i].read_text()
    return "\n".join(f"--- process {j}:\n{self.output(j)[-3000:]}" for j in range(2))


def _checkpoint_steps(workdir: Path) -> list[int]:
  ckpts = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def _state(workdir: Path, step: int) -> dict:
  """A checkpoint written by the two processes, read whole onto this process's first device."""
  path = workdir / "checkpoints" / str(step) / "state"
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                        getattr(meta, "item_metadata", meta))
  return ckptr.restore(path, target)


def _train_rows(workdir: Path) -> list[dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "train/loss" in r]


def test_sigterm_on_one_process_stops_both_at_one_step_and_the_rerun_matches(tmp_path):
  killed, straight = tmp_path / "killed", tmp_path / "straight"
  flags = ("--config.checkpoint.every_steps=5", "--config.export.enabled=True")
  run = TwoProcesses(killed, "killed", *flags)
  deadline = time.monotonic() + TIMEOUT_S
  while not _checkpoint_steps(killed) and time.monotonic() < deadline:
    if any(p.poll() is not None for p in run.procs):
      break
    time.sleep(0.05)
  run.procs[1].send_signal(signal.SIGTERM)  # one host of the two is preempted
  assert run.wait() == [143, 143], run.output()
  saved = []
  for i in range(2):
    lines = [ln for ln in run.output(i).splitlines() if "preemption requested: saving step" in ln]
    assert len(lines) == 1, run.output()
    saved.append(int(lines[0].rsplit("saving step ", 1)[1].split()[0]))
  assert saved[0] == saved[1] < STEPS, saved
  assert _checkpoint_steps(killed)[-1] == saved[0]
  assert not (killed / "export").exists()

  # --verbosity=0: INFO lines, among them the export's, which process 0 alone writes.
  resumed = TwoProcesses(killed, "resumed", *flags, "--verbosity=0")
  assert resumed.wait() == [0, 0], resumed.output()
  for i in range(2):
    assert f"resumed from step {saved[0]}" in resumed.output(i), resumed.output()

  # The same run without the interruption (and without export, which changes no state).
  uninterrupted = TwoProcesses(straight, "straight", f"--config.checkpoint.every_steps={STEPS}")
  assert uninterrupted.wait() == [0, 0], uninterrupted.output()
  a, b = _state(straight, STEPS), _state(killed, STEPS)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The first logged mean after the resume covers fewer steps; the later rows are the same.
  a_rows, b_rows = _train_rows(straight), _train_rows(killed)
  assert [r["step"] for r in a_rows] == [r["step"] for r in b_rows]
  for x, y in zip(a_rows, b_rows, strict=True):
    assert x["train/grad_norm"] == y["train/grad_norm"], (x, y)
    if x["step"] > saved[0] + 10:
      assert x["train/loss"] == y["train/loss"], (x, y)

  # The export is written by process 0 alone, from weights gathered from both processes.
  assert ["exported the model to" in resumed.output(i) for i in range(2)] == [True, False]
  from jaxtune import hf

  model = hf.load(killed / "export")
  np.testing.assert_array_equal(model.norm.scale[...], np.asarray(b["params"]["norm"]["scale"]))
