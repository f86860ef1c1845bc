"""Resuming a run: what may differ from the run's config and data, and what a change does."""

import json
import sys
from pathlib import Path

import pytest

from jaxtune import config as jt_config
from jaxtune import optim, resume, train
from jaxtune.errors import WorkdirError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import tiny  # noqa: E402


def test_execution_keys_may_differ_and_hyperparameters_are_listed():
  a, b = jt_config.default(), jt_config.default()
  b.mesh.data, b.train.progress, b.checkpoint.keep_last, b.model.remat = 1, False, 9, "full"
  assert resume.differences(a.to_dict(), b.to_dict()) == {}
  b.optim.learning_rate, b.data.seq_len = 1e-3, 96
  assert resume.differences(a.to_dict(), b.to_dict()) == {
    "data.seq_len": (a.data.seq_len, 96), "optim.learning_rate": (a.optim.learning_rate, 1e-3)}


def test_structure_changes_are_frozen_including_on_off_switches():
  assert resume.frozen("model.source", "preset:a", "preset:b")
  assert resume.frozen("lora.rank", 0, 8)
  assert resume.frozen("optim.grad_clip_norm", 0.0, 1.0)
  assert not resume.frozen("optim.grad_clip_norm", 1.0, 0.5)
  assert resume.frozen("optim.swa_start", -1, 10) and not resume.frozen("optim.swa_start", 5, 10)
  assert not resume.frozen("optim.learning_rate", 1e-3, 1e-4)


def test_num_labels_from_the_data_is_left_to_the_label_check():
  a, b = jt_config.default(), jt_config.default()
  b.model.num_labels = 3
  assert resume.differences(a.to_dict(), b.to_dict()) == {}
  a.model.num_labels = 2
  assert resume.differences(a.to_dict(), b.to_dict()) == {"model.num_labels": (2, 3)}


def run_config(**overrides):
  c = tiny.get_config()
  c.train.progress = False
  c.train.steps, c.optim.warmup_steps, c.checkpoint.every_steps, c.train.eval_every = 4, 0, 2, 0
  c.mesh.data = 1
  for k, v in overrides.items():
    section, key = k.split(".")
    c[section][key] = v
  return c


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(run_config(), workdir)
  return workdir


def copy(src, dst):
  import shutil

  shutil.copytree(src, dst)
  return dst


def test_changed_config_is_refused_before_anything_is_written(finished_run, tmp_path):
  workdir = copy(finished_run, tmp_path / "w")
  before = (workdir / "config.json").read_text()
  with pytest.raises(WorkdirError, match=r"train.batch_size: 16 -> 8; .*--allow_config_change"):
    train.train_and_evaluate(run_config(**{"train.batch_size": 8, "train.steps": 6}), workdir)
  with pytest.raises(WorkdirError, match=r"model.source.*even --allow_config_change"):
    train.train_and_evaluate(run_config(**{"model.source": "preset:llama-125m"}), workdir,
                             allow_config_change=True)
  assert (workdir / "config.json").read_text() == before


def test_changed_data_is_refused_and_labels_never_change(tmp_path):
  workdir = tmp_path
  (workdir / "checkpoints" / "2").mkdir(parents=True)
  (workdir / "config.json").write_text(jt_config.default().to_json_best_effort())
  (workdir / "run.json").write_text(json.dumps(
    {"data_fingerprint": "aaa", "extra": {"label_names": ["neg", "pos"]}}))
  check = resume.Check(workdir, jt_config.default())
  check.data("aaa", ("neg", "pos"))
  with pytest.raises(WorkdirError, match=r"different data: data fingerprint: 'aaa' -> 'bbb'"):
    check.data("bbb", ("neg", "pos"))
  allowed = resume.Check(workdir, jt_config.default(), allow=True)
  allowed.data("bbb", ("neg", "pos"))
  assert allowed.changes == {"data fingerprint": ("aaa", "bbb")}
  with pytest.raises(WorkdirError, match=r"labels: \['neg', 'pos'\] -> \['neg', 'pos', 'mixed'\]"):
    allowed.data("aaa", ("neg", "pos", "mixed"))


def test_allowed_new_learning_rate_trains_and_is_recorded(finished_run, tmp_path):
  workdir = copy(finished_run, tmp_path / "w")
  result = train.train_and_evaluate(
    run_config(**{"optim.learning_rate": 1e-4, "train.steps": 6}), workdir,
    allow_config_change=True)
  assert result["step"] == 6
  hp = optim.hyperparams(result["state"]["opt_state"])
  assert float(hp["peak_lr"]) == pytest.approx(1e-4)  # not the checkpoint's 3e-3
  changes = json.loads((workdir / "run.json").read_text())["config_changes"]
  assert changes == [{"step": 4, "time": changes[0]["time"], "changes": {
    "optim.learning_rate": {"old": 3e-3, "new": 1e-4}, "train.steps": {"old": 4, "new": 6}}}]
  assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 1e-4


def test_keys_jaxtune_no_longer_has_do_not_block_a_resume():
  old = jt_config.default().to_dict()
  old["train"]["retired_key"] = 3
  assert resume.differences(old, jt_config.default().to_dict()) == {}
