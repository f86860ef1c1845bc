"""Tests for jaxtune.writer: metrics.jsonl, TensorBoard events, run records, MFU, progress bar."""

import datetime
import io
import json
import math
import os
import struct

import jax
import ml_collections
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog

import jaxtune
from jaxtune import writer as writer_lib
from jaxtune.writer import (
  MetricWriter,
  device_peak_flops,
  mfu,
  write_config,
  write_run_info,
)


def _strict_json(line: str):
  def bad(token):
    raise ValueError(f"non-standard JSON constant {token}")

  return json.loads(line, parse_constant=bad)


def _lines(path):
  with open(path) as f:
    return [_strict_json(line) for line in f]


def _events(logdir):
  """All events of all tfevents files under logdir, parsed from the TFRecord framing."""
  events = []
  for root, _, files in os.walk(logdir):
    for name in sorted(files):
      if "tfevents" not in name:
        continue
      with open(os.path.join(root, name), "rb") as f:
        data = f.read()
      i = 0
      while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        events.append(Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4  # length, length crc, payload, payload crc
  return events


def _scalars(logdir):
  out = {}
  for e in _events(logdir):
    for v in e.summary.value:
      if v.HasField("simple_value"):
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


def test_metrics_jsonl_and_tensorboard(tmp_path):
  w = MetricWriter(tmp_path)
  w.write(1, {"train/loss": 2.5, "eval/accuracy": 0.25})
  # Written and flushed at once: readable before close, as after a crash.
  assert _lines(tmp_path / "metrics.jsonl") == [
    {"step": 1, "train/loss": 2.5, "eval/accuracy": 0.25}
  ]
  w.write(
    2, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "eval/accuracy": -math.inf}
  )
  w.write(3, {"train/loss": jax.numpy.float32(1.5)})
  w.write_text(3, "samples/0", "hello world")
  w.close()

  lines = _lines(tmp_path / "metrics.jsonl")
  assert lines[1] == {"step": 2, "train/loss": None, "train/grad_norm": None, "eval/accuracy": None}
  assert lines[2] == {"step": 3, "train/loss": 1.5}
  assert _lines(tmp_path / "text.jsonl") == [{"step": 3, "tag": "samples/0", "text": "hello world"}]

  files = os.listdir(tmp_path / "tb")
  assert any("tfevents" in f for f in files)
  scalars = _scalars(tmp_path / "tb")
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
  assert scalars["train/loss"][0][1] == 2.5 and math.isnan(scalars["train/loss"][1][1])
  assert scalars["eval/accuracy"] == [(1, 0.25), (2, -math.inf)]
  texts = [v.tag for e in _events(tmp_path / "tb") for v in e.summary.value]
  assert any(t.startswith("samples/0") for t in texts)


def test_truncate_after_on_resume(tmp_path):
  with MetricWriter(tmp_path) as w:
    for step in range(1, 6):
      w.write(step, {"train/loss": float(step)})
      w.write_text(step, "s", f"text {step}")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "train/lo')  # torn line of a crash mid-write

  with MetricWriter(tmp_path) as w:  # resumed from the step-3 checkpoint
    w.truncate_after(3)
    w.write(4, {"train/loss": 40.0})
    w.write_text(4, "s", "again")

  assert _lines(tmp_path / "metrics.jsonl") == [
    {"step": 1, "train/loss": 1.0},
    {"step": 2, "train/loss": 2.0},
    {"step": 3, "train/loss": 3.0},
    {"step": 4, "train/loss": 40.0},
  ]
  assert [r["step"] for r in _lines(tmp_path / "text.jsonl")] == [1, 2, 3, 4]
  starts = [e.step for e in _events(tmp_path / "tb") if e.session_log.status == SessionLog.START]
  assert 4 in starts  # TensorBoard purges points at steps >= 4 of the crashed run


def test_appending_after_torn_line_without_truncation(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
  with MetricWriter(tmp_path, tensorboard=False) as w:
    w.write(2, {"a": 2.0})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert _strict_json(lines[-1]) == {"step": 2, "a": 2.0}  # not glued to the torn line
  assert not (tmp_path / "tb").exists()


def test_hparams(tmp_path):
  with MetricWriter(tmp_path) as w:
    w.write(10, {"eval/accuracy": 0.5})
    w.write_hparams(
      {"optim/lr": 1e-3, "model": "qwen3", "lora": True, "layers": [1, 2], "seed": 3},
      {"eval/accuracy": 0.75},
    )
  tags = {v.tag for e in _events(tmp_path / "tb") for v in e.summary.value}
  assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= tags
  assert _scalars(tmp_path / "tb")["eval/accuracy"] == [(10, 0.5), (10, 0.75)]
  # Everything in one run directory: the hparams apply to this run's scalars.
  assert all(os.path.isfile(tmp_path / "tb" / f) for f in os.listdir(tmp_path / "tb"))


def _hparams_sessions(logdir):
  """{run: session group} as TensorBoard's HPARAMS tab lists them, through its own backend."""
  from tensorboard import context
  from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
  from tensorboard.plugins import base_plugin
  from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

  mux = plugin_event_multiplexer.EventMultiplexer()
  mux.AddRunsFromDirectory(str(logdir))
  mux.Reload()
  tb = base_plugin.TBContext(
    data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)),
    logdir=str(logdir),
    multiplexer=mux,
  )
  request = api_pb2.ListSessionGroupsRequest(
    start_index=0, slice_size=10, allowed_statuses=list(api_pb2.Status.values())
  )
  groups = (
    list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb), "", request)
    .run()
    .session_groups
  )
  return {g.name: g for g in groups}


def test_hparams_declared_at_start_show_unfinished_runs_and_are_ended_with_final_metrics(tmp_path):
  from tensorboard.plugins.hparams import api_pb2

  hp = {"optim.learning_rate": 1e-3, "model.source": "preset:tiny"}
  # A run killed after step 5: it declared its hparams at the start and never reached the end.
  with MetricWriter(tmp_path / "killed") as w:
    w.start_hparams(hp, ["train/loss", "eval/accuracy", "test/accuracy"])
    w.write(5, {"train/loss": 2.0, "eval/accuracy": 0.5})
  # A run that ends: write_hparams adds the final metrics and the end of the session.
  with MetricWriter(tmp_path / "done") as w:
    w.start_hparams({**hp, "optim.learning_rate": 2e-3}, ["train/loss", "eval/accuracy"])
    w.write(5, {"train/loss": 1.5, "eval/accuracy": 0.6})
    w.write_hparams(hp, {"eval/accuracy": 0.8})

  groups = _hparams_sessions(tmp_path)
  killed, done = groups["killed/tb"], groups["done/tb"]
  assert killed.hparams["optim.learning_rate"].number_value == 1e-3
  assert killed.hparams["model.source"].string_value == "preset:tiny"
  assert {m.name.tag: (m.training_step, m.value) for m in killed.metric_values} == {
    "train/loss": (5, 2.0),
    "eval/accuracy": (5, 0.5),
  }
  assert killed.sessions[0].status == api_pb2.STATUS_UNKNOWN
  assert done.hparams["optim.learning_rate"].number_value == 2e-3
  assert {m.name.tag: m.value for m in done.metric_values}["eval/accuracy"] == pytest.approx(0.8)
  assert done.sessions[0].status == api_pb2.STATUS_SUCCESS

  # The declared columns, as the event reader sees them: the metric names given at the start.
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import metadata

  acc = event_accumulator.EventAccumulator(str(tmp_path / "killed" / "tb"))
  acc.Reload()
  content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
  assert metadata.SESSION_END_INFO_TAG not in content
  experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
  assert [m.name.tag for m in experiment.metric_infos] == [
    "train/loss",
    "eval/accuracy",
    "test/accuracy",
  ]


def test_images_reach_tensorboard_as_png(tmp_path):
  import matplotlib.image
  from tensorboard.backend.event_processing import event_accumulator

  image = np.zeros((30, 40, 3), np.uint8)
  image[:, :20] = (255, 0, 0)
  with MetricWriter(tmp_path) as w:
    w.write_image(7, "eval/confusion_matrix", image)
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
  acc.Reload()
  (event,) = acc.Images("eval/confusion_matrix")
  assert (event.step, event.width, event.height) == (7, 40, 30)
  decoded = matplotlib.image.imread(io.BytesIO(event.encoded_image_string), format="png")
  np.testing.assert_array_equal((decoded[..., :3] * 255).round().astype(np.uint8), image)


def test_disabled_writer_writes_nothing(tmp_path):
  with MetricWriter(tmp_path / "w", enabled=False) as w:
    w.write(1, {"a": 1.0})
    w.write_text(1, "t", "x")
    w.truncate_after(0)
  assert not (tmp_path / "w").exists()


def test_run_info_and_config(tmp_path, monkeypatch):
  info = write_run_info(
    tmp_path,
    config_json=json.dumps({"optim": {"lr": 0.1}}),
    mesh_shape={"data": 2, "model": 4},
    data_fingerprint="sha256:abc",
    extra={"note": "x"},
  )
  on_disk = json.loads((tmp_path / "run.json").read_text())
  assert on_disk == info
  versions = on_disk["versions"]
  for name in ("jaxtune", "jax", "jaxlib", "flax", "optax", "python"):
    assert versions[name], name
  assert versions["jax"] == jax.__version__
  assert on_disk["device_kind"] == jax.devices()[0].device_kind
  assert on_disk["device_count"] == 8 and on_disk["process_count"] == 1
  assert on_disk["mesh"] == {"data": 2, "model": 4}
  assert on_disk["data_fingerprint"] == "sha256:abc" and on_disk["extra"] == {"note": "x"}
  assert on_disk["config"] == {"optim": {"lr": 0.1}}
  start = datetime.datetime.fromisoformat(on_disk["start_time"])
  assert start.utcoffset() == datetime.timedelta(0)
  pkg_dir = os.path.dirname(os.path.abspath(jaxtune.__file__))
  if os.path.exists(os.path.join(os.path.dirname(pkg_dir), ".git")):
    assert len(on_disk["git_commit"]) == 40 and isinstance(on_disk["git_dirty"], bool)

  # Not a git checkout (e.g. installed from a wheel): silently None.
  fake_pkg = tmp_path / "site" / "jaxtune"
  fake_pkg.mkdir(parents=True)
  monkeypatch.setattr(jaxtune, "__file__", str(fake_pkg / "__init__.py"))
  monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
  info = writer_lib.run_info(config_json="not json", mesh_shape={}, data_fingerprint="", extra={})
  assert info["git_commit"] is None and info["git_dirty"] is None
  assert info["config"] == "not json"

  config = ml_collections.ConfigDict({"optim": {"lr": 0.1, "name": "adamw"}, "steps": 10})
  write_config(tmp_path, config)
  assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()


class _Device:
  def __init__(self, kind):
    self.device_kind = kind


@pytest.mark.parametrize(
  "kind,flops",
  [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("Some Future Chip", None),
  ],
)
def test_device_peak_flops(kind, flops):
  assert device_peak_flops(_Device(kind)) == flops


def test_cpu_peak_and_mfu():
  assert device_peak_flops(jax.devices()[0]) is None
  assert mfu(989e12 * 8 * 0.5, 1.0, 8, 989e12) == pytest.approx(0.5)
  assert mfu(100.0, 2.0, 1, 100.0) == pytest.approx(0.5)
  with pytest.raises(ValueError):
    mfu(1.0, 0.0, 1, 1.0)
