"""report_to=wandb, read back from the offline run's own record file (`run-<id>.wandb`,
parsed with W&B's protobuf): config, metrics per step, summary with the final results, the
export as a model artifact, text samples as a table; offline unless the user says otherwise."""

import json

import psutil

from jaxtune import trackers, writer
from jaxtune.trackers import wandb as wandb_tracker
from tests.trackers import wandb_records


def _no_wandb_service_left():
  """W&B's background service (wandb-core) is stopped once the last run finishes."""
  names = [p.name() for p in psutil.Process().children(recursive=True)]
  assert not [n for n in names if "wandb" in n], names


def test_a_run_reports_to_wandb_offline(tiny_config, tmp_path):
  from jaxtune import train

  c = tiny_config
  c.report_to = "tensorboard,wandb"
  c.tracking.experiment = "tiny"
  c.export.enabled = True
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, workdir)
  _no_wandb_service_left()
  assert list((workdir / "tb").iterdir())  # tensorboard too
  run_id = json.loads((workdir / trackers.IDS_FILE).read_text())["wandb"]["run_id"]
  path = wandb_records.run_file(workdir)
  assert path.name == f"run-{run_id}.wandb"
  recs = wandb_records.records(path)
  (run,) = wandb_records.of_type(recs, "run")
  assert run.run_id == run_id and run.project == "tiny" and run.display_name == "run"
  config = {u.key: json.loads(u.value_json) for u in run.config.update}
  assert config["optim"]["learning_rate"] == c.optim.learning_rate
  rows = wandb_records.history(recs)
  assert [r["_step"] for r in rows if "train/loss" in r] == [3, 6]
  assert [r["_step"] for r in rows if "eval/loss" in r] == [3, 6]
  results = json.loads((workdir / "results.json").read_text())
  summary = wandb_records.summary(recs)
  assert summary["val/loss"] == results["val"]["loss"]
  assert summary["best_step"] == results["best_step"]
  (model,) = [a for a in wandb_records.of_type(recs, "artifact") if a.type == "model"]
  assert model.name == "run-export"
  assert {"config.json", "model.safetensors"} <= {e.path for e in model.manifest.contents}
  saved = {f.path for r in wandb_records.of_type(recs, "files") for f in r.files}
  assert {"results.json", "config.json", "metrics.jsonl"} <= saved
  (exit_record,) = wandb_records.of_type(recs, "exit")
  assert exit_record.exit_code == 0


def test_text_samples_become_a_table_and_the_default_is_offline(tiny_config, tmp_path,
                                                                monkeypatch):
  monkeypatch.delenv("WANDB_MODE")  # no WANDB_MODE and no WANDB_API_KEY: jaxtune picks offline
  assert wandb_tracker.mode() == "offline"
  c = tiny_config
  c.report_to = "wandb"
  with writer.MetricWriter(tmp_path, tensorboard=False,
                           trackers=trackers.from_config(c, tmp_path)) as mw:
    mw.write(1, {"train/loss": 2.0, "train/nan": float("nan")})
    mw.write_text(1, "samples/validation", "1. 'a' -> 'b'")
    mw.write_text(2, "samples/validation", "1. 'a' -> 'c'")
  _no_wandb_service_left()
  recs = wandb_records.records(wandb_records.run_file(tmp_path))  # offline-run-*: offline
  rows = wandb_records.history(recs)
  assert rows[0]["train/loss"] == 2.0 and "train/nan" not in rows[0]  # NaN: only in metrics.jsonl
  tables = [r for r in rows if "samples/validation._type" in r]
  assert [t["samples/validation._type"] for t in tables] == ["table-file"] * 2
  assert tables[-1]["samples/validation.nrows"] == 2  # every sample so far, with its step
  table = wandb_records.run_file(tmp_path).parent / "files" / tables[-1]["samples/validation.path"]
  assert json.loads(table.read_text())["data"] == [[1, "1. 'a' -> 'b'"], [2, "1. 'a' -> 'c'"]]


def test_wandb_mode_follows_the_users_settings(monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "disabled")
  assert wandb_tracker.mode() is None  # W&B reads WANDB_MODE itself
  monkeypatch.delenv("WANDB_MODE")
  monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
  assert wandb_tracker.mode() == "online"
