"""Compile time of jaxtune's train step: unrolled layers against `model.scan_layers` (issue 8).

Traces, lowers and compiles the step the driver runs (build.build_state's model, optimizer and
shardings; step.train_step) for abstract state and batch: nothing is allocated or executed, so
1B-8B shapes compile on any machine, for the local backend (the CPU here, a GPU where there is
one). Each mode runs in a fresh process, so neither profits from the other's caches. Reports the
trace + lower seconds, the XLA compile seconds and the size of the optimised program.

  python benchmarks/compile_time.py --model 1b --seq 2048 --batch 1
  python benchmarks/compile_time.py --model 125m --modes loop,scan --remat full
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402 - a sibling script, not an installed module

MODES = ("loop", "scan")


def parse_args(argv=None):
  parser = tt.build_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--modes", default="loop,scan", help=f"comma-separated, from {MODES}")
  parser.add_argument("--mode", choices=MODES, help="internal: compile one mode in this process")
  args = tt.parse_args(argv, parser)
  for m in args.modes.split(","):
    if m not in MODES:
      parser.error(f"--modes: unknown mode {m!r} (known: {', '.join(MODES)})")
  return args


def compile_once(args) -> dict:
  """Trace, lower and compile one train step; nothing runs."""
  import functools

  import jax
  import numpy as np

  from jaxtune import build, sharding, step
  from jaxtune.data import pipeline

  args.ckpt = ""  # random weights in the preset or flag shape (nothing is loaded)
  c = tt._jax_config(args, tt.jax_compute_dtype(args, "jax"))
  c.model.scan_layers = args.mode == "scan"
  mesh = sharding.make_mesh(**c.mesh)
  static = {}

  def abstract_state():
    # build.build_state without its shardings, which read concrete arrays.
    _, graphdef, _, params, frozen, tx, _ = build.model_and_optimizer(c, mesh, None, 10)
    static.update(graphdef=graphdef, tx=tx)  # static: kept for the step
    return step.init_state(params, tx=tx, seed=c.seed, optim_cfg=c.optim), frozen

  t0 = time.perf_counter()
  state, frozen = jax.eval_shape(abstract_state)
  # One device: everything replicated (a multi-device mesh would need the driver's shardings).
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  ids = np.ones((args.batch, args.seq), np.int32)
  host = {"input_ids": ids, "attention_mask": ids, "loss_mask": ids}
  batch_sh = pipeline.batch_shardings(mesh, host)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k]) for k, v in host.items()}
  state, frozen = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                               (state, frozen))
  step_cfg = step.StepConfig(task="causal_lm", micro_batches=1, skip_nonfinite=False,
                             optim_cfg=c.optim, class_weights=None, lm_loss_chunk=args.lm_loss_chunk)
  fn = jax.jit(functools.partial(step.train_step, static["graphdef"], static["tx"], step_cfg),
               donate_argnums=(0,))
  build_s = time.perf_counter() - t0
  with sharding.use_mesh(mesh):
    t0 = time.perf_counter()
    lowered = fn.lower(state, batch, frozen)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
  hlo = compiled.as_text() or ""
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  return {"mode": args.mode, "build_s": build_s, "lower_s": lower_s, "compile_s": compile_s,
          "total_s": lower_s + compile_s, "hlo_lines": hlo.count("\n"), "params": params,
          "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  if args.mode:
    print(json.dumps(compile_once(args)))
    return []
  argv = list(sys.argv[1:] if argv is None else argv)
  rows = []
  for mode in args.modes.split(","):
    out = subprocess.run([sys.executable, __file__, *argv, "--mode", mode], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
  shape = args.model or f"{args.layers} layers x {args.hidden}"
  print(f"\n{shape}, batch {args.batch} x seq {args.seq}, remat {args.remat}, "
        f"{rows[0]['backend']} ({rows[0]['device_kind']}), {rows[0]['params'] / 1e6:.0f}M params")
  print("mode   trace+lower s  compile s  total s  optimised HLO lines")
  for r in rows:
    print(f"{r['mode']:5s}  {r['lower_s']:13.1f}  {r['compile_s']:9.1f}  {r['total_s']:7.1f}  "
          f"{r['hlo_lines']:19d}")
  by = {r["mode"]: r for r in rows}
  if len(by) == 2:
    print(f"scan / loop total: {by['scan']['total_s'] / by['loop']['total_s']:.2f}x")
  if args.json_out:
    Path(args.json_out).write_text(json.dumps(rows, indent=1))
  return rows


if __name__ == "__main__":
  main()
