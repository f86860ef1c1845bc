"""Runs to report: a real tiny `jaxtune train` run (causal LM, through the CLI, so run.json
records its recipe as users' runs do) and a classification workdir written by jaxtune's own
record writers from values each test can check the page against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.errors import harness

LABELS = ("negative", "neutral", "positive")
# What the classification run's files say, and what the page must show.
CONFUSION = [[5, 1, 0], [2, 3, 1], [0, 0, 6]]
OVERRIDES = {"train.steps": 4, "optim.warmup_steps": 1, "train.eval_every": 2,
             "train.log_every": 1, "checkpoint.every_steps": 0, "data.train_rows": 128,
             "data.eval_rows": 16}


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
  """`jaxtune train --config=configs/tiny.py` for 4 steps: metrics, results, run.json."""
  workdir = tmp_path_factory.mktemp("lm") / "tiny_lm"
  done = harness.run("train", "--config=configs/tiny.py", f"--workdir={workdir}",
                     *(f"--config.{k}={v}" for k, v in OVERRIDES.items()))
  assert done.returncode == 0, str(done)
  return workdir


def write_classification_run(workdir: Path, *, steps: int = 6, finished: bool = True) -> dict:
  """A seq_cls workdir as the driver leaves it (config.json, run.json, metrics.jsonl, and when
  `finished` results.json and errors.jsonl), written through jaxtune.writer and
  jaxtune.evaluate.write_errors; returns what was written."""
  from jaxtune import config as jt_config
  from jaxtune import evaluate, writer

  c = jt_config.default()
  c.model.task, c.model.source = "seq_cls", "/models/tiny-bert"
  c.data.kind, c.data.source, c.data.seq_len = "classification", "/data/reviews.jsonl", 32
  c.train.steps, c.optim.learning_rate = steps, 1e-3
  writer.write_config(workdir, c)
  stats = {"source": "/data/reviews.jsonl", "kind": "classification", "rows_read": 150,
           "skipped": 0, "truncated": 2,
           **{s: {"rows": n, "examples": n, "skipped": 0, "truncated": t, "tokens": 20 * n,
                  "label_counts": dict(zip(LABELS, counts))}
              for s, n, t, counts in (("train", 114, 2, (40, 30, 44)),
                                      ("validation", 18, 0, (6, 6, 6)),
                                      ("test", 18, 0, (6, 6, 6)))}}
  writer.write_run_info(workdir, config_json=c.to_json_best_effort(), mesh_shape={"data": 1},
                        data_fingerprint="feedc0ffee123456",
                        extra={"total_steps": steps, "data_stats": stats,
                               "label_names": list(LABELS)})
  rng = np.random.default_rng(0)
  logged = {}
  with writer.MetricWriter(workdir) as mw:
    for s in range(1, steps + 1):
      row = {"train/loss": 1.1 - 0.1 * s + 0.01 * rng.random(), "train/learning_rate": 1e-3 * s / steps,
             "train/tokens_per_sec": 1000.0 + s, "train/grad_norm": 1.0 / s, "train/skipped_steps": 0}
      mw.write(s, row)
      logged.setdefault(s, {}).update(row)
      if s % 2 == 0:
        ev = {"eval/loss": 1.0 - 0.05 * s, "eval/accuracy": 0.5 + 0.05 * s, "eval/f1_macro": 0.4 + 0.05 * s,
              "eval/examples": 18.0, **{f"eval/f1/{n}": 0.3 + 0.1 * i for i, n in enumerate(LABELS)}}
        mw.write(s, ev)
        logged[s].update(ev)
  out = {"config": c, "metrics": logged, "stats": stats}
  if not finished:
    return out
  # The test split: 18 examples whose labels and predictions give CONFUSION.
  pairs = [(t, p) for t, row in enumerate(CONFUSION) for p, n in enumerate(row) for _ in range(n)]
  labels = np.array([t for t, _ in pairs])
  preds = np.array([p for _, p in pairs])
  probs = np.full((len(pairs), 3), 0.1)
  probs[np.arange(len(pairs)), preds] = np.linspace(0.5, 0.8, len(pairs))
  examples = [{"text": f"review {i}" if i != 7 else "<script>alert('x')</script> & more",
               "label": LABELS[t], "file": "/data/reviews.jsonl", "row": 100 + i}
              for i, (t, _) in enumerate(pairs)]
  details = {"predictions": preds, "labels": labels, "probs": probs,
             "example_id": np.arange(len(pairs))}
  evaluate.write_errors(workdir / "errors.jsonl", details, examples, LABELS)
  test = {"accuracy": 14 / 18, "f1_macro": 0.75, "loss": 0.61, "examples": 18,
          "confusion": CONFUSION, **{f"f1/{n}": 0.7 + 0.05 * i for i, n in enumerate(LABELS)},
          **{f"precision/{n}": 0.6 + 0.1 * i for i, n in enumerate(LABELS)},
          **{f"recall/{n}": 0.65 for n in LABELS}}
  results = {"best_step": steps, "val": {"accuracy": 0.8, "loss": 0.6, "examples": 18},
             "test": test}
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  out["results"] = results
  out["errors"] = [json.loads(x) for x in (workdir / "errors.jsonl").read_text().splitlines()]
  return out


@pytest.fixture
def cls_run(tmp_path) -> tuple[Path, dict]:
  workdir = tmp_path / "cls"
  return workdir, write_classification_run(workdir)
