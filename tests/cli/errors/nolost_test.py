"""Issue 16, "Nothing lost": workdir locks, resumes that differ from the run, output folders.

Each case runs the real `jaxtune` command and checks the exit code, the message's words and
that nothing outside the command's own place changed. Runs come from one tiny finished run,
copied per case.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.errors.harness import REPO, Snapshot, expect_error, run

LOCK = "jaxtune.lock"
RUN = ("--config=configs/tiny.py", "--config.train.steps=4", "--config.optim.warmup_steps=0",
       "--config.checkpoint.every_steps=2", "--config.train.eval_every=0",
       "--config.train.progress=False", "--config.mesh.data=1")


def train(workdir: Path, *flags: str, **kw):
  return run("train", *RUN, f"--workdir={workdir}", *flags, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("finished") / "run"
  done = train(workdir)
  assert done.returncode == 0, str(done)
  return workdir


@pytest.fixture
def workdir(finished, tmp_path) -> Path:
  return Path(shutil.copytree(finished, tmp_path / "run"))


def plant_lock(workdir: Path, pid: int, host: str) -> None:
  (workdir / LOCK).write_text(json.dumps({"pid": pid, "host": host, "since": "2026-01-01"}) + "\n")


# ---------------------------------------------------------------------------- the lock


def test_second_train_on_a_workdir_a_live_run_holds_is_refused_naming_it(tmp_path):
  workdir = tmp_path / "run"
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  env.pop("JAXTUNE_DEBUG", None)
  first = subprocess.Popen(
    [sys.executable, "-m", "jaxtune.main", "train", *RUN, f"--workdir={workdir}",
     "--config.train.steps=100000", "--config.train.log_every=1",
     "--config.checkpoint.every_steps=100000"],
    env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
      time.sleep(0.2)
    held = json.loads((workdir / LOCK).read_text())
    assert held["pid"] == first.pid
    snap = Snapshot(workdir / "config.json", workdir / "run.json", workdir / LOCK)
    line = expect_error(train(workdir), "train", "in use by", f"pid {first.pid}",
                        f"host {socket.gethostname()}", "since", "another --workdir")
    assert held["since"] in line
    snap.assert_unchanged()
  finally:
    first.send_signal(signal.SIGTERM)  # the preemption path: save, release the lock, exit 143
    _, err = first.communicate(timeout=240)
  assert first.returncode == 143, err[-3000:]
  assert not (workdir / LOCK).exists()


def test_lock_naming_a_live_process_is_refused(workdir):
  plant_lock(workdir, os.getpid(), socket.gethostname())
  snap = Snapshot(workdir)
  expect_error(train(workdir), "train", f"pid {os.getpid()}", "live process", f"delete {workdir / LOCK}")
  snap.assert_unchanged()


def test_lock_of_another_host_is_refused_saying_how_to_remove_it(workdir):
  plant_lock(workdir, 4242, "node-elsewhere")
  snap = Snapshot(workdir)
  expect_error(train(workdir), "train", "node-elsewhere", "another host", "cannot be checked",
               f"delete {workdir / LOCK}")
  snap.assert_unchanged()


def test_stale_lock_of_a_dead_process_is_taken_over(workdir):
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  plant_lock(workdir, gone.pid, socket.gethostname())
  snap = Snapshot(workdir / "checkpoints")
  done = train(workdir)  # the run is finished: it resumes at its last step and ends
  assert done.returncode == 0, str(done)
  assert f"taking over a stale lock left by pid {gone.pid}" in done.stderr
  assert not (workdir / LOCK).exists()
  snap.assert_unchanged(except_under=(workdir / "checkpoints" / "4",))


# ------------------------------------------------------------------ resuming differently


@pytest.mark.parametrize("flags, words", [
  (("--config.data.seq_len=32", "--config.train.batch_size=8"),
   ("data.seq_len: 64 -> 32", "train.batch_size: 16 -> 8", "--allow_config_change", "config.json")),
  (("--config.model.source=preset:llama-125m",),
   ("model.source: 'preset:tiny-llama' -> 'preset:llama-125m'", "shapes", "new --workdir")),
  (("--config.model.source=preset:llama-125m", "--allow_config_change"),
   ("model.source", "even --allow_config_change cannot change")),
  (("--config.lora.rank=4", "--allow_config_change"), ("lora.rank: 0 -> 4", "shapes")),
], ids=["seq_len_and_batch_size", "model", "model_even_with_flag", "lora_rank_with_flag"])
def test_resume_with_a_different_config_is_refused_listing_the_differences(workdir, flags, words):
  snap = Snapshot(workdir)
  expect_error(train(workdir, *flags), "train", str(workdir), "resuming a run", *words)
  snap.assert_unchanged()  # config.json above all


def test_allowed_learning_rate_change_is_accepted_and_recorded(workdir):
  snap = Snapshot(workdir / "checkpoints" / "4")
  done = train(workdir, "--config.optim.learning_rate=0.0001", "--config.train.steps=6",
               "--allow_config_change")
  assert done.returncode == 0, str(done)
  info = json.loads((workdir / "run.json").read_text())
  assert info["config_changes"][0]["step"] == 4
  assert info["config_changes"][0]["changes"] == {
    "optim.learning_rate": {"old": 0.003, "new": 0.0001}, "train.steps": {"old": 4, "new": 6}}
  assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 0.0001
  snap.assert_unchanged()  # the checkpoint it resumed from


# ----------------------------------------------------------------------- empty --workdir


@pytest.mark.parametrize("args", [
  ("train", *RUN, "--workdir="),
  ("train", *RUN, "--workdir=  "),
  ("eval", "--workdir=", "--data=x.jsonl"),
  ("export", "--workdir=", "--out=out"),
  ("generate", "--workdir=", "--prompt=hello"),
], ids=["train", "train_blank", "eval", "export", "generate"])
def test_empty_workdir_is_refused(tmp_path, args):
  (tmp_path / "config.json").write_text("{}")  # what an empty --workdir would read or replace
  args = tuple(a.replace("configs/", f"{REPO}/configs/") for a in args)
  snap = Snapshot(tmp_path)
  expect_error(run(*args, cwd=tmp_path), args[0], "--workdir is empty", "--workdir=")
  snap.assert_unchanged()


# ---------------------------------------------------------------------------- export


def test_export_into_a_folder_with_a_foreign_file_is_refused(workdir, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("my notes")
  snap = Snapshot(workdir, out)
  expect_error(run("export", f"--workdir={workdir}", f"--out={out}"), "export",
               f"--out={out}", "notes.txt", "did not write", "--overwrite")
  snap.assert_unchanged()


@pytest.mark.parametrize("where, overwrite", [
  ("checkpoints", False), ("checkpoints/new", True), (".", True),
], ids=["checkpoints", "inside_checkpoints", "the_workdir_itself"])
def test_export_over_its_own_input_is_refused_even_with_overwrite(workdir, where, overwrite):
  out = (workdir / where).resolve()
  snap = Snapshot(workdir)
  args = ["export", f"--workdir={workdir}", f"--out={out}"] + (["--overwrite"] if overwrite else [])
  expect_error(run(*args), "export", "input", "replace")
  snap.assert_unchanged()


def test_export_rerun_into_its_own_output_succeeds_and_keeps_foreign_files(workdir, tmp_path):
  out = tmp_path / "out"
  for _ in range(2):
    done = run("export", f"--workdir={workdir}", f"--out={out}")
    assert done.returncode == 0, str(done)
  assert (out / "model.safetensors").exists() and (out / ".jaxtune-outputs.json").exists()
  (out / "notes.txt").write_text("my notes")
  snap = Snapshot(workdir, out / "notes.txt")
  done = run("export", f"--workdir={workdir}", f"--out={out}", "--overwrite")
  assert done.returncode == 0, str(done)
  snap.assert_unchanged()


def test_train_export_into_a_folder_with_a_foreign_file_is_refused_before_training(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "export").mkdir(parents=True)
  (workdir / "export" / "keep.bin").write_text("mine")
  snap = Snapshot(tmp_path)
  expect_error(train(workdir, "--config.export.enabled=True"), "train", "(export.enabled)",
               "keep.bin", "did not write", "export.enabled=False")
  snap.assert_unchanged()  # refused before any checkpoint, config.json or lock is left


# ------------------------------------------------------------------------------ eval


@pytest.mark.parametrize("name", ["../escape", "sub/name", "/tmp/absolute"])
def test_eval_name_must_stay_in_the_workdir(workdir, name):
  snap = Snapshot(workdir.parent)
  expect_error(run("eval", f"--workdir={workdir}", "--data=held.jsonl", f"--name={name}"),
               "eval", "--name=", "plain name")
  snap.assert_unchanged()


def test_eval_never_writes_over_its_data_file(workdir):
  data = workdir / "eval_held.json"
  data.write_text('[{"text": "abc"}]\n')
  snap = Snapshot(workdir)
  expect_error(run("eval", f"--workdir={workdir}", f"--data={data}", "--name=held", "--overwrite"),
               "eval", "would replace", "eval_held.json", "input")
  snap.assert_unchanged()


def test_eval_name_of_a_file_jaxtune_did_not_write_is_refused(workdir):
  (workdir / "eval_mine.json").write_text("{}")
  snap = Snapshot(workdir)
  expect_error(run("eval", f"--workdir={workdir}", "--data=held.jsonl", "--name=mine"),
               "eval", "eval_mine.json", "not written by jaxtune", "--overwrite")
  snap.assert_unchanged()


# ------------------------------------------------------------------------------ data


def rows_file(path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps({"text": f"row number {i}", "label": i % 2}) + "\n"
                          for i in range(40)))
  return path


def test_data_clean_never_replaces_its_input(tmp_path):
  data = rows_file(tmp_path / "d" / "train.jsonl")
  snap = Snapshot(tmp_path)
  expect_error(run("data", "clean", f"--data={data}", f"--out={data.parent}", "--overwrite"),
               "data", "writing train.jsonl would replace", "input")
  snap.assert_unchanged()


def test_data_clean_into_a_folder_with_other_files_is_refused(tmp_path):
  data = rows_file(tmp_path / "d" / "reviews.jsonl")
  snap = Snapshot(tmp_path)
  expect_error(run("data", "clean", f"--data={data}", f"--out={data.parent}"),
               "data", "reviews.jsonl", "did not write", "--overwrite")
  snap.assert_unchanged()
