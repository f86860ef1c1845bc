"""jaxtune.console: the progress bar never has a line run into it, one line per evaluation, the
final table, quiet logging by default with --verbosity for more, and no misleading warnings."""

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import ml_collections
import pytest

from jaxtune import console, predict, train
from jaxtune.cli import eval as eval_cli
from tests.finetune_test import classification_config, sentiment_rows, tiny_bert, write_jsonl

__all__ = ["tiny_bert"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
  def isatty(self):
    return True


@pytest.fixture
def logs_to(monkeypatch):
  """`logs_to(stream, verbosity)`: the global console on `stream`, logging configured as a
  subcommand does; the root logger is put back afterwards."""
  root = logging.getLogger()
  saved = root.handlers[:], root.level

  def setup(stream, verbosity=None):
    monkeypatch.setattr(console.CONSOLE, "_err", stream)
    monkeypatch.setattr(console.CONSOLE, "_open", None)
    console.configure_logging(verbosity)

  yield setup
  logging.captureWarnings(False)
  logging.getLogger("jaxtune.tune").setLevel(logging.NOTSET)
  console._raised.clear()
  root.handlers[:], _ = saved
  root.setLevel(saved[1])


def test_nothing_runs_into_the_bar_on_a_terminal(logs_to):
  tty = _Tty()
  logs_to(tty)
  bar = console.CONSOLE.progress_bar(100, tokens_per_s_key="train/tokens_per_sec", min_interval_s=0)
  bar.update(10, {"train/loss": 2.0, "train/tokens_per_sec": 1000.0})
  logging.getLogger("jaxtune.data").warning("disk nearly full")
  bar.update(20, {"train/loss": 1.5})
  console.CONSOLE.print("eval step 20 | loss 1.4 (best)")
  bar.update(30, {"train/loss": 1.2})
  with warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.warn("an old API", DeprecationWarning, stacklevel=1)
  bar.update(100, {"train/loss": 1.0})
  bar.close()
  text = tty.getvalue()
  # What the terminal shows: each line is its last \r-separated part.
  shown = [line.split("\r")[-1].rstrip() for line in text.split("\n")]
  assert shown[-1] == "" and "" not in shown[:-1], shown  # ends with a newline, no blank lines
  assert shown[0].startswith("step 10/100")
  assert shown[1] == "warning: disk nearly full"
  assert shown[2].startswith("step 20/100") and shown[3] == "eval step 20 | loss 1.4 (best)"
  assert shown[4].startswith("step 30/100")
  assert shown[5].startswith("warning [py]:") and "an old API" in shown[5]
  assert shown[6].strip().startswith("warnings.warn(")  # the source line Python shows with it
  assert shown[-2].startswith("step 100/100 (100.0%)")
  # No line holds two things: a bar drawn over a message, or a message after a bar.
  for line in text.split("\n"):
    assert len(re.findall(r"step \d+/100|warning|eval step", line.split("\r")[-1])) <= 1, line


def test_off_a_terminal_the_bar_prints_plain_lines(logs_to):
  out = io.StringIO()
  logs_to(out)
  bar = console.CONSOLE.progress_bar(10, log_interval_s=0)
  bar.update(5, {"train/loss": 2.0})
  logging.getLogger("jaxtune").error("one error")
  bar.update(10, {"train/loss": 1.0})
  bar.close()
  assert "\r" not in out.getvalue()
  lines = out.getvalue().splitlines()
  assert [x.split(" |")[0] for x in lines] == [
    "step 5/10 (50.0%)",
    "error: one error",
    "step 10/10 (100.0%)",
  ]


@pytest.mark.parametrize(
  "verbosity, shown",
  [
    (None, ["WARNING"]),
    (-1, ["WARNING"]),
    (0, ["INFO", "WARNING"]),
    (1, ["DEBUG", "INFO", "WARNING"]),
  ],
)
def test_verbosity_chooses_the_levels_shown(logs_to, verbosity, shown):
  out = io.StringIO()
  logs_to(out, verbosity)
  for name in ("jaxtune.checkpoint", "jax._src.xla_bridge"):
    for level in ("DEBUG", "INFO", "WARNING"):
      logging.getLogger(name).log(getattr(logging, level), "%s from %s", level, name)
  logging.getLogger("jaxtune.tune.pbt").info("PBT generation 1: member 2 <- member 0")
  text = out.getvalue()
  # A search's progress is shown unless the verbosity asks for warnings only.
  assert ("PBT generation 1: member 2 <- member 0\n" in text) == (verbosity != -1), text
  for level in ("DEBUG", "INFO", "WARNING"):
    for name in ("jaxtune.checkpoint", "jax._src.xla_bridge"):
      assert (f"{level} from {name}" in text) == (level in shown), text
  if verbosity is None:  # quiet: short lines, the library named
    assert "warning: WARNING from jaxtune.checkpoint\n" in text
    assert "warning [jax]: WARNING from jax._src.xla_bridge\n" in text
  elif verbosity >= 0:  # verbose: level letter, time and logger, as absl's lines have
    assert re.search(r"^I \d\d:\d\d:\d\d\.\d{3} jax\._src\.xla_bridge: INFO from", text, re.M), text


def test_eval_line_shows_the_objective_with_its_best_and_the_main_metrics():
  line = console.EvalLine("eval/accuracy", "max", "seq_cls")
  metrics = {"eval/accuracy": 0.8125, "eval/f1_macro": 0.8, "eval/loss": 0.41, "eval/examples": 64}
  assert line(0, metrics, track=False) == "eval step 0 | accuracy 0.8125 | f1 0.8 | loss 0.41"
  assert line(150, {**metrics, "eval/accuracy": 0.82}) == (
    "eval step 150 | accuracy 0.82 (best) | f1 0.8 | loss 0.41"
  )
  assert (
    line(200, metrics) == "eval step 200 | accuracy 0.8125 (best 0.82 @150) | f1 0.8 | loss 0.41"
  )
  lm = console.EvalLine("eval/loss", "min", "causal_lm", best=2.0, best_step=30)  # resumed
  assert lm(60, {"eval/loss": 2.5, "eval/perplexity": 12.18, "eval/tokens": 4032.0}) == (
    "eval step 60 | loss 2.5 (best 2 @30) | perplexity 12.18"
  )


def test_run_summary_is_an_aligned_table(tmp_path):
  config = ml_collections.ConfigDict(
    {
      "checkpoint": {"best_metric": "eval/accuracy"},
      "model": {"task": "seq_cls"},
      "export": {"enabled": True},
    }
  )
  (tmp_path / "errors.jsonl").write_text("{}\n")
  val = {
    "loss": 0.41,
    "accuracy": 0.82,
    "precision_macro": 0.8,
    "recall_macro": 0.79,
    "f1_macro": 0.795,
    "examples": 1061,
    "f1/negative": 0.8,
    "confusion": [[1, 2], [3, 4]],
  }
  test = {**val, "accuracy": 0.8031, "examples": 1066}
  result = {
    "step": 600,
    "stopped_early": True,
    "results": {"best_step": 450, "val": val, "test": test},
  }
  text = console.run_summary(result, config, tmp_path, 125.2)
  lines = text.splitlines()
  assert (
    lines[0]
    == "done: step 600 in 2:05 (stopped early); best checkpoint: step 450 by accuracy (0.82)"
  )
  assert lines[1].split() == ["validation", "test"]
  rows = {x.split()[0]: x.split()[1:] for x in lines[2:-1]}
  assert list(rows) == ["loss", "accuracy", "precision", "recall", "f1", "examples"]
  assert rows["accuracy"] == ["0.8200", "0.8031"] and rows["examples"] == ["1061", "1066"]
  assert len({len(x) for x in lines[1:-1]}) == 1  # right-aligned columns: equal widths
  assert lines[-1] == (
    f"results: {tmp_path / 'results.json'}, misclassified test examples: "
    f"{tmp_path / 'errors.jsonl'}, export: {tmp_path / 'export'}"
  )


def _train(workdir, *extra):
  # As a user runs it: JAX probes its backends (no JAX_PLATFORMS), one CPU device.
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAXTUNE_DEBUG")}
  env.update(PYTHONPATH=str(REPO), XLA_FLAGS="")
  cmd = [
    sys.executable,
    "-m",
    "jaxtune.main",
    "train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    "--config.optim.warmup_steps=2",
    "--config.checkpoint.every_steps=2",
    "--config.checkpoint.keep_last=1",
    *extra,
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr[-5000:]
  return done


def test_train_console_is_quiet_by_default_and_verbose_on_request(tmp_path):
  done = _train(tmp_path / "quiet", "--config.train.steps=8", "--config.train.eval_every=4")
  err, out = done.stderr, done.stdout
  for noise in (
    "Unable to initialize backend",
    "deleting checkpoint",
    "orbax",
    "absl",
    "CheckpointManager",
  ):
    assert noise not in err + out, err
  assert not re.search(r"^[IWE]\d{4} ", err, re.M), err  # no absl-format log lines
  assert re.search(r"^eval step 4 \| loss [\d.]+ \(best\) \| perplexity [\d.]+$", err, re.M), err
  assert re.search(r"^eval step 8 \| loss [\d.]+ \(best", err, re.M), err
  assert re.search(r"^step 8/8 \(100\.0%\)", err, re.M), err
  lines = out.splitlines()
  assert re.fullmatch(
    r"done: step 8 in \d+:\d\d; best checkpoint: step 8 by loss \([\d.]+\)", lines[0]
  ), out
  assert lines[1].split() == ["validation"] and [x.split()[0] for x in lines[2:5]] == [
    "loss",
    "perplexity",
    "tokens",
  ], out
  assert lines[-1] == f"results: {tmp_path / 'quiet' / 'results.json'}", out

  verbose = _train(
    tmp_path / "verbose", "--config.train.steps=4", "--config.train.eval_every=0", "--verbosity=1"
  )
  err = verbose.stderr
  assert re.search(
    r"^I [\d:.]+ jax\._src\.xla_bridge: Unable to initialize backend 'tpu'", err, re.M
  )
  assert re.search(
    r"^D [\d:.]+ jaxtune\.checkpoint: deleting checkpoint .*checkpoints/2$", err, re.M
  )
  assert re.search(r"^I [\d:.]+ orbax: .*Saving checkpoint at step 4", err, re.M), err[-3000:]


def test_no_fresh_head_warning_where_the_trained_head_is_loaded(tiny_bert, tmp_path, caplog):
  data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(64, 0))
  config = classification_config(tiny_bert, data)
  config.train.steps, config.train.eval_every, config.export.enabled = 2, 0, False
  config.optim.warmup_steps = 1
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, tmp_path / "run")
  fresh = [r.getMessage() for r in caplog.records if "initialised fresh" in r.getMessage()]
  # Training a new head: said once, for both tensors (as transformers lists them).
  assert len(fresh) == 1 and "classifier.weight, classifier.bias absent" in fresh[0], fresh
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    eval_cli.evaluate_file(tmp_path / "run", str(data), name="again")
    predict.classify(tmp_path / "run", ["a fine film"])
  assert not [r for r in caplog.records if "fresh" in r.getMessage()], caplog.text


def test_progress_bar_tty_redraws_in_place_and_throttles(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(console, "_now", lambda: clock[0])
  out = _Tty()
  bar = console.ProgressBar(100, initial_step=10, stream=out)
  bar.update(11, {"train/loss": 2.0, "train/tokens_per_s": 12345.0})
  clock[0] += 0.05
  bar.update(12, {"train/loss": 1.9})  # throttled
  assert out.getvalue().count("\r") == 1
  clock[0] += 1.0
  bar.update(21, {"train/loss": 1.5})
  text = out.getvalue()
  assert text.count("\r") == 2 and "\n" not in text
  last = text.split("\r")[-1]
  assert "step 21/100" in last and "loss 1.5000" in last and "12.3k tok/s" in last
  assert "9.52 it/s" in last and "ETA 0:08" in last  # 10 steps in 1.05 s, 79 steps left
  clock[0] += 0.01
  bar.update(100, {"train/loss": 1.0})  # the last step is always drawn
  bar.close()
  text = out.getvalue()
  assert text.split("\r")[-1].startswith("step 100/100 (100.0%)") and text.endswith("\n")
  assert text.count("\n") == 1


def test_progress_bar_plain_lines_when_not_a_tty(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(console, "_now", lambda: clock[0])
  out = io.StringIO()
  bar = console.ProgressBar(1000, stream=out, log_interval_s=30.0)
  for step in range(1, 101):
    clock[0] += 1.0
    bar.update(step, {"train/loss": 1.0 / step})
  bar.close()
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue()
  # first update, then every 30 s, then the final state on close
  assert [line.split()[1] for line in lines] == [
    "1/1000",
    "31/1000",
    "61/1000",
    "91/1000",
    "100/1000",
  ]
