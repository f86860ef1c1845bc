"""Trials per hour: the same P trials trained one after another (the plain step, one device),
as one vmapped population on one device, and as a vmapped population sharded over the devices
(members along the mesh's population axis, `mesh.population`).

Each trial: `--steps` train steps, then one validation pass. Every mode includes compilation
and evaluation; model loading and data building are shared setup and not timed. The members
differ in learning rate and weight decay (traced hyperparameters). `--devices=N` on a CPU
splits it into N XLA devices (--xla_force_host_platform_device_count) before JAX starts.

  python benchmarks/population.py --config=configs/sentiment_minilm.py:quick --members=8
  python benchmarks/population.py --config=configs/tiny.py --members=8 --steps=20 --devices=2

Prints one line per mode and each mode's ratio against sequential; --json=FILE writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# mode -> (vmapped, mesh.population, mesh.data): sequential and vmapped on one device; sharded
# with as many member groups as divide the members and the devices.
MODES = {"sequential": (False, 1, 1), "vmapped": (True, 1, 1), "sharded": (True, -1, 1)}


def one_mode(config, hparams, steps: int, mode: str, workdir: str) -> dict:
  import jax

  from jaxtune.tune.population import Population

  vmapped, config.mesh.population, config.mesh.data = MODES[mode]
  t0 = time.perf_counter()
  pop = Population(config, hparams, steps, workdir, vmapped=vmapped)
  setup = time.perf_counter() - t0
  # Wall time is the figure; the process's CPU time beside it says how much of a slow wall time
  # was waiting for a core on a shared machine.
  t0, c0 = time.perf_counter(), time.process_time()
  losses = pop.train(0, steps)
  scores = pop.evaluate()
  jax.block_until_ready(jax.tree.leaves(pop.states))
  seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
  # A second round of the same steps: the steady state, compilation excluded.
  t0, c0 = time.perf_counter(), time.process_time()
  pop.train(steps, steps)
  jax.block_until_ready(jax.tree.leaves(pop.states))
  steady, steady_cpu = time.perf_counter() - t0, time.process_time() - c0
  return {"mode": mode, "devices": pop.mesh.devices.size, "mesh": dict(pop.mesh.shape),
          "members": len(hparams), "steps": steps, "setup_s": round(setup, 2),
          "trial_s": round(seconds, 2), "trial_cpu_s": round(cpu, 2),
          "trials_per_hour": round(len(hparams) / seconds * 3600, 1),
          "steady_steps_per_s": round(len(hparams) * steps / steady, 3),
          "steady_cpu_s": round(steady_cpu, 2),
          "losses": [round(x, 4) for x in losses],
          "eval_loss": [round(s["eval/loss"], 4) for s in scores]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/sentiment_minilm.py:quick")
  p.add_argument("--members", type=int, default=8)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=0, help="0: the recipe's")
  p.add_argument("--eval_rows", type=int, default=256, help="cap on validation rows per trial")
  p.add_argument("--devices", type=int, default=2, help="CPU: split into this many devices")
  p.add_argument("--modes", default=",".join(MODES), help="comma-separated, of " + ",".join(MODES))
  p.add_argument("--json", default="")
  a = p.parse_args(argv)
  if a.devices > 1:  # before JAX starts; a no-op on accelerators
    flag = f"--xla_force_host_platform_device_count={a.devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  import jax

  from jaxtune import recipes

  config = recipes.load(a.config)
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
         "host_devices": jax.device_count(), "config": a.config, "batch_size": config.train.batch_size,
         "load_avg": [round(x, 1) for x in os.getloadavg()]}
  modes = a.modes.split(",")
  with tempfile.TemporaryDirectory() as tmp:
    runs = [one_mode(config, hparams, a.steps, m, os.path.join(tmp, m)) for m in modes]
  out["load_avg_after"] = [round(x, 1) for x in os.getloadavg()]
  for r in runs:
    print(json.dumps({**out, **{k: v for k, v in r.items() if k not in ("losses", "eval_loss")}}))
  for r in runs[1:]:
    np.testing.assert_allclose(r["eval_loss"], runs[0]["eval_loss"], rtol=2e-3,
                               err_msg=f"{r['mode']} and {runs[0]['mode']} trained different models")
  out["runs"] = runs
  ref = next((r for r in runs if r["mode"] == "sequential"), runs[0])
  for r in runs:
    r["ratio_trials_per_hour"] = round(r["trials_per_hour"] / ref["trials_per_hour"], 2)
    r["ratio_steady"] = round(r["steady_steps_per_s"] / ref["steady_steps_per_s"], 2)
    print(f"{r['mode']:>10} on {r['devices']} device(s): {r['trials_per_hour']} trials/hour "
          f"({r['ratio_trials_per_hour']}x {ref['mode']}), steady state "
          f"{r['steady_steps_per_s']} member-steps/s ({r['ratio_steady']}x); CPU s: trials "
          f"{r['trial_cpu_s']}, steady {r['steady_cpu_s']}")
  if a.json:
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
  main()
