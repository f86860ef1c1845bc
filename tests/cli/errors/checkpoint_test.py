"""Battery, 'Nothing lost': non-finite runs, corrupted checkpoints, unwritable workdirs.

Each case runs `jaxtune train` as a user would and checks the exit code, the one error line (or
the warning of a recovery that succeeds), and that the files that must survive did.

Read-only workdirs: tests usually run as root, and root ignores permission bits. The command
then runs under `setpriv` without the capabilities that let root bypass them (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH, CAP_FOWNER), so `chmod a-w` really makes the workdir read-only for it: the
kernel answers EACCES as it would to any user. As a non-root user plain `chmod` is enough.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.errors.harness import CONFIGS, REPO, Result, Snapshot, expect_error, run

TINY = str(CONFIGS / "tiny.py")
BASE = ("--config.train.progress=False", "--config.mesh.data=1", "--config.train.eval_every=0",
        "--config.train.steps=20", "--config.checkpoint.every_steps=10")
# Warms up to a learning rate of 1e30 over 10 steps: step 1 makes the weights huge but finite,
# step 2 is the first non-finite one (tests/train_test.py HUGE_LR).
HUGE_LR = ("--config.optim.learning_rate=1e30", "--config.optim.warmup_steps=10",
           "--config.checkpoint.every_steps=1")


def train(workdir: Path, *extra: str) -> Result:
  return run("train", f"--config={TINY}", f"--workdir={workdir}", *BASE, *extra)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
  """A tiny run that saved checkpoints 10 and 20."""
  workdir = tmp_path_factory.mktemp("base") / "run"
  result = train(workdir)
  assert result.returncode == 0, str(result)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
  return workdir


@pytest.fixture
def copy_of_run(finished_run, tmp_path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  return workdir


def flip_bytes(step_dir: Path) -> None:
  """Inverts 4 bytes in the middle of the largest array file: orbax reads it without noticing."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  path = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  mid = len(data) // 2
  data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
  path.write_bytes(bytes(data))


def checkpoint_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


# ------------------------------------------------------------------------------ non-finite


def test_nonfinite_under_stop_names_the_step_and_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  repo = Snapshot(CONFIGS)
  result = train(workdir, *HUGE_LR)
  expect_error(result, "train", "non-finite", "at step 2", "last good checkpoint",
               f"step 2 in {workdir / 'checkpoints'}", "optim.learning_rate")
  # Steps 3..9 ran before the log step noticed: none of their states was saved.
  assert checkpoint_steps(workdir) == [1, 2]
  repo.assert_unchanged()


def test_nonfinite_under_skip_past_the_share_fails_keeping_the_last_good(tmp_path):
  workdir = tmp_path / "run"
  repo = Snapshot(CONFIGS)
  result = train(workdir, *HUGE_LR, "--config.train.on_nonfinite=skip",
                 "--config.checkpoint.keep_last=1")
  expect_error(result, "train", "8 steps", "skipped", "train.max_skipped_fraction=0.1",
               "of 20 steps", f"step 2 in {workdir / 'checkpoints'}")
  assert checkpoint_steps(workdir) == [2, 9]  # the last good one outlives keep_last=1
  repo.assert_unchanged()


def test_nonfinite_share_out_of_range_is_refused(tmp_path):
  result = train(tmp_path / "run", "--config.train.max_skipped_fraction=2")
  expect_error(result, "train", "train.max_skipped_fraction=2", "[0, 1]")
  assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------ corruption


def test_corrupted_newest_checkpoint_resumes_from_the_previous_with_a_warning(copy_of_run):
  flip_bytes(copy_of_run / "checkpoints" / "20")
  previous = Snapshot(copy_of_run / "checkpoints" / "10")
  result = train(copy_of_run)
  assert result.returncode == 0, str(result)
  assert "Traceback" not in result.stderr, str(result)
  newest = copy_of_run / "checkpoints" / "20"
  assert f"checkpoint {newest} is corrupt" in result.stderr, str(result)
  assert "differ from the checksum" in result.stderr and "falling back" in result.stderr
  assert "resumed from step 10" in result.stderr, str(result)
  previous.assert_unchanged()
  assert checkpoint_steps(copy_of_run) == [10, 20]  # step 20 trained again and rewritten


def test_every_checkpoint_corrupted_is_one_line(copy_of_run):
  for step in ("10", "20"):
    flip_bytes(copy_of_run / "checkpoints" / step)
  before = Snapshot(copy_of_run)
  result = train(copy_of_run)
  expect_error(result, "train", str(copy_of_run / "checkpoints"), "every checkpoint is corrupt",
               "backup", "new --workdir")
  before.assert_unchanged()


# ------------------------------------------------------------------------------ unwritable


def _unprivileged_prefix() -> list[str]:
  if os.geteuid() != 0:
    return []
  setpriv = shutil.which("setpriv")
  if setpriv is None:
    pytest.skip("running as root, and setpriv is missing to drop root's permission override")
  caps = "-dac_override,-dac_read_search,-fowner"
  return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def train_unprivileged(workdir: Path, *extra: str) -> Result:
  """`jaxtune train` that the kernel holds to permission bits (see module doc)."""
  args = ("train", f"--config={TINY}", f"--workdir={workdir}", *BASE, *extra)
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
  env.pop("JAXTUNE_DEBUG", None)
  proc = subprocess.run([*_unprivileged_prefix(), sys.executable, "-m", "jaxtune.main", *args],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  return Result(args, proc.returncode, proc.stdout, proc.stderr)


def _read_only(path: Path) -> None:
  for p in [path, *path.rglob("*")]:
    if not p.is_symlink():
      p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(path: Path) -> None:
  for p in [path, *path.rglob("*")]:
    if not p.is_symlink():
      p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_read_only_workdir_is_one_line_naming_it(copy_of_run):
  before = Snapshot(copy_of_run)
  _read_only(copy_of_run)
  try:
    result = train_unprivileged(copy_of_run, "--config.train.steps=40")
  finally:
    _writable(copy_of_run)
  expect_error(result, "train", "cannot write", str(copy_of_run), "permission denied", "--workdir")
  before.assert_unchanged()


def test_read_only_checkpoints_fail_before_training_and_stay_intact(copy_of_run):
  checkpoints = copy_of_run / "checkpoints"
  before = Snapshot(checkpoints)
  _read_only(checkpoints)
  try:
    # A longer run changes the schedule, which a resume only takes with --allow_config_change.
    result = train_unprivileged(copy_of_run, "--config.train.steps=40", "--allow_config_change")
  finally:
    _writable(checkpoints)
  expect_error(result, "train", f"cannot write {checkpoints}", "permission denied",
               "(steps 10, 20) are intact")
  # No library's logged error beside jaxtune's one line (jaxtune.console names the library).
  assert "ERROR:absl" not in result.stderr and "error [" not in result.stderr, str(result)
  before.assert_unchanged()
  # Refused before the first step: nothing was logged past step 20.
  assert '"step": 21' not in (copy_of_run / "metrics.jsonl").read_text()


def test_a_file_in_place_of_the_checkpoint_directory_is_one_line(finished_run, tmp_path):
  # Unwritable for root as well: a file stands where jaxtune must create a directory.
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a directory\n")
  before = Snapshot(workdir)
  result = train(workdir)
  expect_error(result, "train", f"cannot write {workdir / 'checkpoints'}",
               "a file stands where a directory is needed", "--workdir")
  before.assert_unchanged(except_under=(workdir / "config.json", workdir / "data_cache"))
