"""Remote (gs://) workdirs, through the same code on a local directory that is treated as remote.

Object stores cannot append or rename: the writer stages the JSONL files locally and uploads
whole copies; the export is staged and uploaded too. Here `writer.is_remote` says yes for a
local directory, so epath does the "uploads" locally and the files can be checked.
"""

import json
import sys
from pathlib import Path

import pytest

from jaxtune import train, writer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def remote(tmp_path, monkeypatch):
  root = tmp_path / "bucket"
  monkeypatch.setattr(writer, "is_remote", lambda p: str(p).startswith(str(root)))
  return root


def lines(path):
  return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_jsonl_files_are_staged_and_uploaded_whole(remote, monkeypatch):
  monkeypatch.setattr(writer, "UPLOAD_EVERY_S", 1e9)
  workdir = remote / "run"
  w = writer.MetricWriter(workdir, tensorboard=False, enabled=True)
  assert Path(w._dir) != workdir  # appends go to a local stage
  w.write(1, {"train/loss": 2.0})
  w.write_text(1, "sample", "hello")
  assert not (workdir / "metrics.jsonl").exists()  # not yet: uploads are throttled
  w.flush()
  assert [r["step"] for r in lines(workdir / "metrics.jsonl")] == [1]
  assert lines(workdir / "text.jsonl")[0]["text"] == "hello"

  monkeypatch.setattr(writer, "UPLOAD_EVERY_S", 0.0)
  w.write(2, {"train/loss": 1.5})
  assert [r["step"] for r in lines(workdir / "metrics.jsonl")] == [1, 2]  # uploaded at once
  w.write(3, {"train/loss": float("nan")})
  w.close()
  assert lines(workdir / "metrics.jsonl")[-1] == {"step": 3, "train/loss": None}

  # A resumed run on a fresh machine: the stage starts from the workdir's copies, truncated.
  resumed = writer.MetricWriter(workdir, tensorboard=False, enabled=True)
  resumed.truncate_after(2)
  assert [r["step"] for r in lines(workdir / "metrics.jsonl")] == [1, 2]
  resumed.write(3, {"train/loss": 1.2})
  resumed.close()
  assert [r["step"] for r in lines(workdir / "metrics.jsonl")] == [1, 2, 3]


def test_records_are_written_whole_without_temporary_files(remote):
  workdir = remote / "run"
  writer.write_run_info(workdir, config_json="{}", mesh_shape={"data": 1},
                        data_fingerprint="abc", extra={})
  assert json.loads((workdir / "run.json").read_text())["data_fingerprint"] == "abc"
  assert sorted(p.name for p in workdir.iterdir()) == ["run.json"]


@pytest.mark.slow
def test_a_run_writes_everything_into_a_remote_workdir(remote):
  sys.path.insert(0, str(REPO / "configs"))
  import tiny

  c = tiny.get_config()
  c.train.steps = 12
  c.train.progress = False
  c.export.enabled = True
  workdir = remote / "run"
  train.train_and_evaluate(c, workdir)
  names = {p.name for p in workdir.iterdir()}
  assert {"config.json", "run.json", "metrics.jsonl", "results.json", "checkpoints",
          "export"} <= names
  assert lines(workdir / "metrics.jsonl")[-1]["step"] == 12
  assert (workdir / "export" / "config.json").exists()
  assert (workdir / "export" / "model.safetensors").exists()
