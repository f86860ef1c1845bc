"""Trials per hour: P members trained as one vmapped population against the same P trials
trained one after another (the same engine with the plain step), on the default JAX device.

Each trial: `--steps` train steps, then one validation pass. Both sides include compilation
and evaluation; model loading and data building are shared setup and not timed. The members
differ in learning rate and weight decay (traced hyperparameters).

  python benchmarks/population.py --config=configs/sentiment_minilm.py:quick --members=8
  python benchmarks/population.py --config=configs/tiny.py --members=8 --steps=20

Prints one line per mode and the speed-up; --json=FILE writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_recipe(spec: str):
  import importlib.util

  file, _, arg = spec.partition(":")
  s = importlib.util.spec_from_file_location("_bench_recipe", file)
  module = importlib.util.module_from_spec(s)
  s.loader.exec_module(module)
  return module.get_config(arg or None)


def one_mode(config, hparams, steps: int, vmapped: bool, workdir: str) -> dict:
  from jaxtune.tune.population import Population

  t0 = time.perf_counter()
  pop = Population(config, hparams, steps, workdir, vmapped=vmapped)
  setup = time.perf_counter() - t0
  t0 = time.perf_counter()
  losses = pop.train(0, steps)
  scores = pop.evaluate()
  jax.block_until_ready(jax.tree.leaves(pop.states))
  seconds = time.perf_counter() - t0
  # A second round of the same steps: the steady state, compilation excluded.
  t0 = time.perf_counter()
  pop.train(steps, steps)
  jax.block_until_ready(jax.tree.leaves(pop.states))
  steady = time.perf_counter() - t0
  return {"mode": "vmapped" if vmapped else "sequential", "members": len(hparams),
          "steps": steps, "setup_s": round(setup, 2), "trial_s": round(seconds, 2),
          "trials_per_hour": round(len(hparams) / seconds * 3600, 1),
          "steady_steps_per_s": round(len(hparams) * steps / steady, 3),
          "losses": [round(x, 4) for x in losses],
          "eval_loss": [round(s["eval/loss"], 4) for s in scores]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/sentiment_minilm.py:quick")
  p.add_argument("--members", type=int, default=8)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=0, help="0: the recipe's")
  p.add_argument("--eval_rows", type=int, default=256, help="cap on validation rows per trial")
  p.add_argument("--json", default="")
  a = p.parse_args(argv)
  config = load_recipe(a.config)
  config.train.steps, config.train.epochs, config.train.progress = a.steps, 0.0, False
  config.optim.warmup_steps = min(config.optim.warmup_steps, a.steps // 4)
  if a.batch_size:
    config.train.batch_size = a.batch_size
  if config.data.kind == "synthetic":
    config.data.eval_rows = min(config.data.eval_rows, a.eval_rows)
  elif not config.data.max_rows or config.data.max_rows > a.eval_rows:
    config.data.max_rows = max(a.eval_rows, config.train.batch_size)
  rng = np.random.default_rng(0)
  base = float(config.optim.learning_rate)
  hparams = [{"optim.learning_rate": base * float(np.exp(rng.uniform(-1, 1))),
              "optim.weight_decay": float(rng.uniform(0, 0.1))} for _ in range(a.members)]
  out = {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
         "config": a.config, "batch_size": config.train.batch_size}
  with tempfile.TemporaryDirectory() as tmp:
    runs = [one_mode(config, hparams, a.steps, vm, tmp) for vm in (True, False)]
  for r in runs:
    print(json.dumps({**out, **{k: v for k, v in r.items() if k not in ("losses", "eval_loss")}}))
  np.testing.assert_allclose(runs[0]["eval_loss"], runs[1]["eval_loss"], rtol=2e-3,
                             err_msg="the two modes trained different models")
  out["runs"] = runs
  out["speedup_trials_per_hour"] = round(runs[0]["trials_per_hour"] / runs[1]["trials_per_hour"], 2)
  out["speedup_steady"] = round(runs[0]["steady_steps_per_s"] / runs[1]["steady_steps_per_s"], 2)
  print(f"speed-up, trials per hour (vmapped / sequential): {out['speedup_trials_per_hour']}x; "
        f"steady-state steps: {out['speedup_steady']}x on {out['device']}")
  if a.json:
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
  main()
