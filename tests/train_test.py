"""End-to-end tests of the training driver on the tiny recipe (CPU, fake 8-device mesh)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxtune import train

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))
import tiny  # noqa: E402


def set_keys(c, overrides: dict):
  """`c` with each dotted key ('train.steps') of `overrides` set; the test files' one helper."""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def tiny_config(**overrides):
  c = tiny.get_config()
  c.train.progress = False
  return set_keys(c, overrides)


def read_metrics(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_state(workdir, step):
  path = Path(workdir) / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one")
  cfg = tiny_config(**{"mesh.data": 1})
  return workdir, train.train_and_evaluate(cfg, workdir)


def test_tiny_run_learns_and_records_everything(one_device_run):
  workdir, result = one_device_run
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if "train/loss" in r]
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"] - 1.0
  for key in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_sec",
              "train/step_time_s"):
    assert key in train_rows[0], key
  assert any("eval/loss" in r for r in rows)
  assert result["eval"]["perplexity"] < 20  # byte-level grammar text: uniform would be 257
  assert result["compilations"] == 1, "a step after the first recompiled"
  run = json.loads((workdir / "run.json").read_text())
  assert run["device_count"] >= 1 and run["data_fingerprint"]
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 60
  assert list((workdir / "tb").rglob("events.out.tfevents*"))


def test_eight_device_mesh_matches_one_device(one_device_run, tmp_path):
  _, one = one_device_run
  cfg = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  eight = train.train_and_evaluate(cfg, tmp_path)
  a = [r["train/loss"] for r in read_metrics(one_device_run[0]) if "train/loss" in r]
  b = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
  np.testing.assert_allclose(a, b, rtol=2e-4)
  q = eight["state"]["params"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_stacked_layers_on_eight_devices_match_unrolled_run(one_device_run, tmp_path):
  from jaxtune import export, generate, hf
  from jaxtune.models import layers

  cfg = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
                       "model.scan_layers": True, "export.enabled": True})
  out = train.train_and_evaluate(cfg, tmp_path)
  assert out["compilations"] == 1
  a = [r["train/loss"] for r in read_metrics(one_device_run[0]) if "train/loss" in r]
  b = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
  np.testing.assert_allclose(a, b, rtol=2e-4)
  q = out["state"]["params"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.shape[0] == 2 and q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  # The export is in the HF layout: layer 1 of the file is row 1 of the stack.
  exported = hf.load(tmp_path / "export")
  np.testing.assert_allclose(exported.layers[1].self_attn.q_proj.kernel[...], q[1], rtol=1e-6)
  # A finished run reloads unstacked (generation walks the layers), greedy-decoding as the export.
  run = export.load_run(tmp_path)
  assert not layers.is_stacked(run.model.layers)
  tokens = [generate.Generator(m)([[5, 6, 7]], max_new_tokens=4).tokens for m in (run.model, exported)]
  assert tokens[0] == tokens[1]


def test_gradient_accumulation_matches_full_batch(one_device_run, tmp_path):
  cfg = tiny_config(**{"mesh.data": 1, "train.micro_batches": 4})
  train.train_and_evaluate(cfg, tmp_path)
  # The same 60 steps and schedule as the full-batch run: every logged loss must match.
  a = [r["train/loss"] for r in read_metrics(one_device_run[0]) if "train/loss" in r]
  b = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
  assert len(a) == len(b) == 6
  # Measured on CPU: at most 1.2e-7 apart (float32 sums in another order); 1e-5 leaves room for
  # that rounding to grow over 60 steps while a wrong scaling of the micro-batches (>= 1e-3) fails.
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_nonfinite_stops_naming_the_step(tmp_path):
  cfg = tiny_config(**{"mesh.data": 1, "optim.l2": 1e38, "optim.penalty_exclude": "^$",
                       "train.steps": 10, "optim.warmup_steps": 2})
  with pytest.raises(train.NonFiniteError, match="at step 0"):
    train.train_and_evaluate(cfg, tmp_path)


def test_nonfinite_skip_counts_and_keeps_weights(tmp_path):
  cfg = tiny_config(**{"mesh.data": 1, "optim.l2": 1e38, "optim.penalty_exclude": "^$",
                       "train.steps": 10, "train.on_nonfinite": "skip",
                       "train.max_skipped_fraction": 1.0, "optim.warmup_steps": 2})
  result = train.train_and_evaluate(cfg, tmp_path)
  assert int(result["state"]["skipped"]) == 10
  assert read_metrics(tmp_path)[-2]["train/skipped_steps"] == 10


def _ckpt_steps(workdir):
  return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


# A learning rate that warms up from 0 to 1e30 over 10 steps: step 1 makes the weights huge but
# finite, and step 2 is the first non-finite one.
HUGE_LR = {"mesh.data": 1, "optim.learning_rate": 1e30, "optim.warmup_steps": 10,
           "checkpoint.every_steps": 1, "train.steps": 20, "train.eval_every": 0}


def test_nonfinite_stop_checkpoints_nothing_after_the_bad_step(tmp_path):
  with pytest.raises(train.NonFiniteError, match=r"at step 2.*Last good checkpoint .*: step 2 in"):
    train.train_and_evaluate(tiny_config(**HUGE_LR), tmp_path)
  # Steps 3..9 ran before the log step noticed; none of them may be saved.
  assert _ckpt_steps(tmp_path) == [1, 2]


def test_nonfinite_skip_fails_past_the_share_and_keeps_the_last_good(tmp_path):
  cfg = tiny_config(**HUGE_LR, **{"train.on_nonfinite": "skip", "checkpoint.keep_last": 1})
  with pytest.raises(train.NonFiniteError, match=r"8 steps .* skipped, more than "
                     r"train.max_skipped_fraction=0.1 of 20 steps.*step 2 in"):
    train.train_and_evaluate(cfg, tmp_path)
  # keep_last=1 keeps the newest; the last good one (step 2) survives retention as well.
  assert _ckpt_steps(tmp_path) == [2, 9]


def test_max_skipped_fraction_is_validated(tmp_path):
  with pytest.raises(ValueError, match=r"train.max_skipped_fraction=1.5: must be a finite number in \[0, 1\]"):
    train.train_and_evaluate(tiny_config(**{"train.max_skipped_fraction": 1.5}), tmp_path)


def _cli(workdir, *extra):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return [sys.executable, "-m", "jaxtune.main", "train", f"--config={REPO}/configs/tiny.py",
          f"--workdir={workdir}", "--config.train.progress=False", "--config.mesh.data=1",
          "--config.checkpoint.every_steps=5", "--config.train.steps=40", *extra], env


def _run_until_checkpoint(workdir, sig, min_step=10):
  cmd, env = _cli(workdir)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  ckpts = Path(workdir) / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
    if steps and max(steps) >= min_step:
      proc.send_signal(sig)
      break
    time.sleep(0.05)
  out = proc.communicate(timeout=240)[0].decode()
  return proc.returncode, out


@pytest.fixture(scope="module")
def straight_cli_run(tmp_path_factory):
  """An uninterrupted `jaxtune train` of `_cli`'s run: what interrupted runs must end equal to."""
  workdir = tmp_path_factory.mktemp("straight")
  cmd, env = _cli(workdir)
  subprocess.run(cmd, env=env, check=True, capture_output=True)
  return workdir


def _resume_and_compare(straight, workdir, resumed_from: int | None = None):
  """Rerun the interrupted run in `workdir`; its final state must equal `straight`'s bit for bit."""
  cmd, env = _cli(workdir)
  done = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resumed from step {resumed_from if resumed_from is not None else ''}" in done.stderr
  a, b = final_state(straight, 40), final_state(workdir, 40)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
  assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after the resume"


def test_sigkill_and_rerun_matches_uninterrupted_run_bitwise(straight_cli_run, tmp_path):
  code, out = _run_until_checkpoint(tmp_path, signal.SIGKILL)
  assert code == -signal.SIGKILL, out
  _resume_and_compare(straight_cli_run, tmp_path)


def hparams_session(workdir):
  """(hparams, declared metric names, end status or None) of the run, as TensorBoard reads them."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import metadata

  acc = event_accumulator.EventAccumulator(str(Path(workdir) / "tb"))
  acc.Reload()
  content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
  start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
  experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
  end = content.get(metadata.SESSION_END_INFO_TAG)
  return (start.hparams, [m.name.tag for m in experiment.metric_infos],
          None if end is None else metadata.parse_session_end_info_plugin_data(end).status)


def test_sigterm_saves_exits_and_rerun_matches_uninterrupted_run_bitwise(straight_cli_run, tmp_path):
  from tensorboard.plugins.hparams import api_pb2

  code, out = _run_until_checkpoint(tmp_path, signal.SIGTERM, min_step=5)
  assert code == 143, out[-3000:]
  saved = int(out.split("preemption requested: saving step ", 1)[1].split()[0])
  assert saved < 40 and (tmp_path / "checkpoints" / str(saved)).is_dir(), out[-3000:]
  # Stopped before its end, the run is in TensorBoard's HParams tab already, still open.
  hparams, metric_names, status = hparams_session(tmp_path)
  assert hparams["train.steps"].number_value == 40 and status is None
  assert metric_names == ["train/loss", "eval/loss", "eval/perplexity", "eval/tokens"]
  _resume_and_compare(straight_cli_run, tmp_path, resumed_from=saved)
  assert hparams_session(tmp_path)[2] == api_pb2.STATUS_SUCCESS  # ended by the resumed run


@pytest.mark.parametrize("flag, message", [
  ("--config.train.no_such_key=1", "no_such_key"),
  ("--config.train.steps=abc", "train.steps"),
  ("--config.optim.name=adamx", "optim.name"),
])
def test_bad_config_names_the_key(tmp_path, flag, message):
  cmd, env = _cli(tmp_path, flag)
  done = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert done.returncode != 0
  assert message in done.stderr + done.stdout


def test_early_stopping_restores_best_and_writes_results(tmp_path):
  # "Higher eval loss is better" turns a healthy run into one that gets worse at every eval:
  # the second evaluation stops it, and the first (step 10) is the best checkpoint.
  cfg = tiny_config(**{"mesh.data": 1, "train.eval_every": 10, "train.early_stopping_patience": 1,
                       "checkpoint.best_mode": "max"})
  result = train.train_and_evaluate(cfg, tmp_path)
  assert result["stopped_early"] and result["step"] == 20
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["best_step"] == 10
  assert saved["val"]["loss"] > result["eval"]["loss"]  # step 10 weights are worse than step 20's


def test_bfloat16_parameters_train(tmp_path):
  cfg = tiny_config(**{"mesh.data": 1, "model.param_dtype": "bfloat16",
                       "model.compute_dtype": "bfloat16", "train.steps": 30, "train.eval_every": 0,
                       "optim.warmup_steps": 5})
  result = train.train_and_evaluate(cfg, tmp_path)
  rows = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
  assert rows[-1] < rows[0] - 0.5
  assert result["state"]["params"]["norm"]["scale"].dtype == np.dtype("bfloat16")


def test_lora_trains_only_adapters_and_checkpoints_only_them(tmp_path):
  cfg = tiny_config(**{"mesh.data": 1, "lora.rank": 4, "lora.alpha": 8.0, "train.steps": 30,
                       "train.eval_every": 0, "optim.warmup_steps": 5, "export.enabled": True,
                       "optim.learning_rate": 2e-2,
                       "export.merge_lora": False})
  train.train_and_evaluate(cfg, tmp_path)
  rows = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
  # A random frozen base limits what rank-4 adapters can learn in 30 steps, but they learn.
  assert rows[-1] < rows[0] - 0.1
  saved = final_state(tmp_path, 30)
  paths = ["/".join(str(k.key) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(saved["params"])[0]]
  assert paths and all(p.endswith(("lora_a", "lora_b")) for p in paths), paths
  assert json.loads((tmp_path / "export" / "adapter_config.json").read_text())["r"] == 4


@pytest.mark.parametrize("sub, flag", [("train", "--workdir"), ("eval", "--data")])
def test_subcommand_help_lists_its_flags(sub, flag):
  done = subprocess.run([sys.executable, "-m", "jaxtune.main", sub, "--help"],
                        capture_output=True, text=True)
  assert done.returncode == 0 and flag in done.stdout, done.stdout + done.stderr
