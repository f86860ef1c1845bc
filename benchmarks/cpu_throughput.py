"""CPU training throughput: jaxtune's train step against a plain transformers + torch loop.

One run builds one random Llama-style checkpoint (an HF `LlamaConfig`, `save_pretrained` into a
temporary directory) and times a full training step on it with every requested "side":

  torch          LlamaForCausalLM (sdpa attention, float32), torch.optim.AdamW, grad clip,
                 loss on all tokens: the loop an HF user writes by hand.
  torch-passive  the same with OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of
                 spinning at barriers. On a machine whose cores other processes also use, a
                 spinning thread waits for a descheduled peer, and torch's steps can take 10-100x
                 longer; on a quiet machine this row should match `torch`.
  torch-compile  the same as `torch` with `torch.compile(model)` (inductor; needs a C++ compiler).
  jax            jaxtune: the checkpoint loaded by `train.load_model` (`jaxtune.hf.load`), the
                 optimizer from `optim.build_optimizer`, and `step.train_step` jitted exactly as
                 `train.train_and_evaluate` jits it (state/batch shardings, donated state);
                 float32 params and float32 compute.
  jax-bf16       the same with bfloat16 compute (float32 master weights). CPUs emulate much of
                 bfloat16 math, so this row shows the cost of the default compute dtype on CPU.
  jax-driver     `train.train_and_evaluate` itself on `data.kind='synthetic'` rows of the same
                 shape, step times read back from metrics.jsonl: the whole driver's overhead
                 (host batching, device_put, metric fetches), but on byte-level token ids.

Every side runs in its own subprocess, one after another, so peak RSS is per side and the two
frameworks never share (or fight over) thread pools. Both sides start from the same weights and
see the same random token batches, so their first and last losses are printed side by side as a
check that they compute the same thing. Warmup steps are excluded; the first step (jit or
torch.compile compilation included) is reported on its own. Tokens/s is batch * seq divided by
the median step time, which shrugs off the occasional step slowed by another process; the mean
is in the JSON too.

  python benchmarks/cpu_throughput.py                     # torch, jax, jax-bf16; ratio; MD row
  python benchmarks/cpu_throughput.py --sides torch,torch-compile,jax,jax-driver --steps 10
  python benchmarks/cpu_throughput.py --breakdown         # forward / backward / optimizer split
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = ("torch", "torch-passive", "torch-compile", "jax", "jax-bf16", "jax-driver")
TORCH_SIDES = ("torch", "torch-passive", "torch-compile")
DEFAULT_SIDES = "torch,jax,jax-bf16"
# jaxtune's default weight-decay exclusion (optim.DEFAULT_EXCLUDE), applied to torch names too so
# both optimizers decay the same tensors (jaxtune paths look like 'layers/0/mlp/up_proj/kernel',
# torch names like 'model.layers.0.mlp.up_proj.weight'; both regexes match the same tensors).
TORCH_NO_DECAY = r"(^|\.)bias$|norm|embed"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  m = p.add_argument_group("model (one HF LlamaConfig for both sides)")
  m.add_argument("--layers", type=int, default=4, help="decoder layers")
  m.add_argument("--hidden", type=int, default=256, help="model width")
  m.add_argument("--heads", type=int, default=4, help="query heads")
  m.add_argument("--kv-heads", type=int, default=4, help="< --heads for grouped-query attention")
  m.add_argument("--intermediate", type=int, default=688, help="MLP width")
  m.add_argument("--vocab", type=int, default=32000, help="vocabulary (untied output head)")
  r = p.add_argument_group("run")
  r.add_argument("--seq", type=int, default=256, help="tokens per row")
  r.add_argument("--batch", type=int, default=8, help="rows per step")
  r.add_argument("--steps", type=int, default=20, help="timed steps per side")
  r.add_argument("--warmup", type=int, default=3, help="untimed steps, the first one included")
  r.add_argument("--sides", default=DEFAULT_SIDES, help=f"comma-separated, from {','.join(SIDES)}")
  r.add_argument("--rounds", type=int, default=1,
                 help="run every side this many times, alternating order; keep each side's "
                      "fastest round (on a busy machine the fastest is the least disturbed)")
  r.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
  r.add_argument("--seed", type=int, default=0)
  r.add_argument("--torch-adamw", choices=("default", "foreach", "fused"), default="default",
                 help="torch AdamW implementation (default: torch's choice, a per-tensor loop on CPU)")
  r.add_argument("--breakdown", action="store_true",
                 help="also time forward, forward+backward and the optimizer update alone")
  r.add_argument("--jax-profile", default="",
                 help="directory for a jax.profiler trace of 3 steps of the jax sides")
  r.add_argument("--json-out", default="", help="also write the summary JSON to this file")
  o = p.add_argument_group("optimizer (identical on both sides)")
  o.add_argument("--lr", type=float, default=1e-4)
  o.add_argument("--b1", type=float, default=0.9)
  o.add_argument("--b2", type=float, default=0.999)
  o.add_argument("--eps", type=float, default=1e-8)
  o.add_argument("--weight-decay", type=float, default=0.01)
  o.add_argument("--clip", type=float, default=1.0, help="global grad-norm clip")
  # Internal: the parent re-runs this file with these to measure one side in a fresh process.
  p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
  p.add_argument("--ckpt", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  unknown = set(args.sides.split(",")) - set(SIDES)
  if unknown:
    p.error(f"--sides: unknown {sorted(unknown)}; choose from {SIDES}")
  if args.steps < 1 or args.warmup < 1:
    p.error("--steps and --warmup must be at least 1 (the first step compiles)")
  return args


# ------------------------------------------------------------------------------------- shared


def host_batch(args, i: int):
  """Step i's random token ids [B, T] (the same on every side), all tokens real."""
  import numpy as np

  rng = np.random.default_rng([args.seed, i])
  return rng.integers(0, args.vocab, size=(args.batch, args.seq), dtype=np.int32)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def summarize(times: list[float], args, first: float, cpu_times: list[float] | None = None,
              **extra) -> dict:
  """Figures of one side; call it right after the timed loop, before any breakdown or profile,
  so peak RSS is that of loading and training alone (ru_maxrss only ever grows).

  `cpu_times` (process CPU seconds per step, all threads) stay close to what a quiet machine
  would show when other processes steal the cores, so tokens per CPU-second gives a second,
  steadier ratio on a busy machine; on a quiet one wall time is the figure that counts.
  """
  tokens = args.batch * args.seq
  med = statistics.median(times)
  if cpu_times:
    extra["cpu_s_median"] = statistics.median(cpu_times)
    extra["tokens_per_cpu_s"] = tokens / extra["cpu_s_median"]
  return {
    "tokens_per_s": tokens / med,
    "tokens_per_s_mean": tokens * len(times) / sum(times),
    "step_s_median": med,
    "step_s_min": min(times),
    "step_s_max": max(times),
    "first_step_s": first,
    "peak_rss_mib": peak_rss_mib(),
    **extra,
  }


def median_time(fn, reps: int) -> float:
  """Median seconds of `fn()` (which must block until its work is done) after one warm call."""
  fn()
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


# -------------------------------------------------------------------------------------- torch


def run_torch(args, compile_model: bool) -> dict:
  import torch
  from transformers import LlamaForCausalLM

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  model = LlamaForCausalLM.from_pretrained(args.ckpt, attn_implementation="sdpa",
                                           dtype=torch.float32)
  model.train()
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if re.search(TORCH_NO_DECAY, name) else decay).append(p)
  impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.torch_adamw]
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
    lr=args.lr, betas=(args.b1, args.b2), eps=args.eps, **impl,
  )
  fwd = torch.compile(model) if compile_model else model
  mask = torch.ones((args.batch, args.seq), dtype=torch.long)

  def train_step(i: int) -> float:
    ids = torch.from_numpy(host_batch(args, i)).long()
    opt.zero_grad(set_to_none=True)
    loss = fwd(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    if args.clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    opt.step()
    return loss.item()

  t = time.perf_counter()
  first_loss = train_step(0)
  first = time.perf_counter() - t
  for i in range(1, args.warmup):
    train_step(i)
  times, cpu = [], []
  for i in range(args.warmup, args.warmup + args.steps):
    t, c = time.perf_counter(), time.process_time()
    last_loss = train_step(i)  # torch on CPU is synchronous: the step is done when it returns
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  out = summarize(times, args, first, cpu, first_loss=first_loss, last_loss=last_loss,
                  threads=torch.get_num_threads(), versions=f"torch {torch.__version__}")
  if args.breakdown:
    ids = torch.from_numpy(host_batch(args, 0)).long()

    def forward():
      fwd(input_ids=ids, attention_mask=mask, labels=ids)  # builds the autograd graph, as training does

    def forward_backward():
      opt.zero_grad(set_to_none=True)
      fwd(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()

    def update():
      if args.clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
      opt.step()

    reps = max(3, args.steps // 2)
    out["breakdown_s"] = {"forward": median_time(forward, reps),
                          "forward_backward": median_time(forward_backward, reps)}
    forward_backward()  # gradients for the update-only timing
    out["breakdown_s"]["clip_and_update"] = median_time(update, reps)
  return out


# ---------------------------------------------------------------------------------------- jax


def _jax_config(args, compute_dtype: str):
  from jaxtune import config as jt_config

  c = jt_config.default()
  c.seed = args.seed
  c.model.source = args.ckpt
  c.model.param_dtype = "float32"
  c.model.compute_dtype = compute_dtype
  c.train.batch_size = args.batch
  c.train.steps = args.warmup + args.steps
  c.data.seq_len = args.seq
  o = c.optim
  o.name, o.learning_rate, o.b1, o.b2, o.eps = "adamw", args.lr, args.b1, args.b2, args.eps
  o.weight_decay, o.grad_clip_norm = args.weight_decay, args.clip
  o.schedule, o.warmup_steps = "constant", 0  # torch's AdamW runs at a constant lr
  return c


def run_jax(args, compute_dtype: str) -> dict:
  import functools

  import jax
  import numpy as np

  from jaxtune import optim, sharding, step, train
  from jaxtune.data import pipeline

  c = _jax_config(args, compute_dtype)
  # The driver's own sections, in its order (train.train_and_evaluate: mesh, model, optimizer,
  # state and shardings), so what is timed is the step the driver runs.
  mesh = sharding.make_mesh(**c.mesh)
  model = train.load_model(c, mesh, None)
  graphdef, _, params, frozen = train.split_model(model, c)  # frozen is None: no LoRA here
  del model
  total = args.warmup + args.steps
  tx, _ = optim.build_optimizer(c.optim, params, total, len(params["layers"]))
  with sharding.use_mesh(mesh):
    state = jax.jit(functools.partial(step.init_state, tx=tx, seed=c.seed, optim_cfg=c.optim))(params)
  state_sh = train._state_shardings(state, mesh)
  ones = np.ones((args.batch, args.seq), np.int32)

  def batch_of(i: int) -> dict:
    # What a tokenized, unpacked data set gives the driver: ids, attention mask, loss mask.
    return {"input_ids": host_batch(args, i), "attention_mask": ones, "loss_mask": ones}

  batch_sh = pipeline.batch_shardings(mesh, batch_of(0))
  step_cfg = step.StepConfig(task="causal_lm", micro_batches=1, skip_nonfinite=False,
                             optim_cfg=c.optim, class_weights=None)
  train_fn = jax.jit(lambda s, b, f: step.train_step(graphdef, tx, step_cfg, s, b, f),
                     in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None),
                     donate_argnums=(0,))

  def train_step(state, i: int):
    state, m = train_fn(state, pipeline.to_device(batch_of(i), batch_sh), frozen)
    return jax.block_until_ready((state, m))

  extra = {"threads": os.cpu_count(), "versions": f"jax {jax.__version__}",
           "devices": len(jax.devices())}
  with sharding.use_mesh(mesh):
    t = time.perf_counter()
    state, m = train_step(state, 0)
    first = time.perf_counter() - t
    extra["first_loss"] = float(m["train/loss"])
    for i in range(1, args.warmup):
      state, m = train_step(state, i)
    times, cpu = [], []
    for i in range(args.warmup, args.warmup + args.steps):
      t, c = time.perf_counter(), time.process_time()
      state, m = train_step(state, i)
      times.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    extra["last_loss"] = float(m["train/loss"])
    out = summarize(times, args, first, cpu, **extra)
    if args.jax_profile:
      trace_dir = Path(args.jax_profile) / args.worker
      with jax.profiler.trace(str(trace_dir)):
        for i in range(3):
          state, m = train_step(state, i)
      out["profile_dir"] = str(trace_dir)
    if args.breakdown:
      out["breakdown_s"] = _jax_breakdown(args, graphdef, tx, state, batch_of(0), batch_sh)
  return out


def _jax_breakdown(args, graphdef, tx, state, host, batch_sh) -> dict:
  """The step's pieces jitted on their own: forward+loss, +backward, clip+AdamW update."""
  import jax
  import optax
  from flax import nnx

  from jaxtune import step
  from jaxtune.data import pipeline

  batch = pipeline.to_device(host, batch_sh)
  params = state["params"]

  def loss(p, b):
    model = nnx.merge(graphdef, p)
    logits = model(b["input_ids"], **step.model_kwargs(b))
    s, w = step.loss_terms("causal_lm", logits, b, None)
    return s / w

  fwd = jax.jit(loss)
  fwd_bwd = jax.jit(jax.value_and_grad(loss))
  grads = fwd_bwd(params, batch)[1]

  def update(p, g, o):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  upd = jax.jit(update)
  opt_state = state["opt_state"]
  reps = max(3, args.steps // 2)
  return {
    "forward": median_time(lambda: jax.block_until_ready(fwd(params, batch)), reps),
    "forward_backward": median_time(lambda: jax.block_until_ready(fwd_bwd(params, batch)), reps),
    "clip_and_update": median_time(lambda: jax.block_until_ready(upd(params, grads, opt_state)), reps),
  }


def run_jax_driver(args) -> dict:
  """`train.train_and_evaluate` end to end; per-step times from metrics.jsonl (log_every=1)."""
  import jax

  from jaxtune import train

  c = _jax_config(args, "float32")
  total = args.warmup + args.steps
  c.data.kind = "synthetic"  # byte-level ids (< 257): any vocab of 257 or more accepts them
  c.data.train_rows = args.batch * total
  c.data.eval_rows = args.batch
  c.train.log_every = 1  # one metrics row per step: per-step times, and a fetch every step
  c.train.eval_every = 0
  c.train.eval_batch_size = args.batch
  c.train.progress = False
  c.checkpoint.every_steps = 10 * total  # only the final save, after the timed loop
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    error = ""
    try:
      train.train_and_evaluate(c, workdir)
    except Exception as e:  # noqa: BLE001 - the final eval/save come after the timed steps
      error = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()
            if line.strip()] if (Path(workdir) / "metrics.jsonl").exists() else []
  rows = [r for r in rows if "train/step_time_s" in r]
  if len(rows) < total:
    raise RuntimeError(f"driver logged {len(rows)} of {total} steps; error: {error or 'none'}")
  times = [r["train/step_time_s"] for r in rows[args.warmup:total]]
  extra = {"first_loss": rows[0]["train/loss"], "last_loss": rows[total - 1]["train/loss"],
           "driver_wall_s": wall, "threads": os.cpu_count(), "versions": f"jax {jax.__version__}"}
  if error:
    extra["driver_error_after_loop"] = error[:300]
  return summarize(times, args, rows[0]["train/step_time_s"], **extra)


def worker(args) -> None:
  side = args.worker
  if side in TORCH_SIDES:
    out = run_torch(args, compile_model=side == "torch-compile")
  elif side == "jax-driver":
    out = run_jax_driver(args)
  else:
    out = run_jax(args, "bfloat16" if side == "jax-bf16" else "float32")
  print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------- parent


def write_checkpoint(args, path: Path) -> dict:
  """The one HF config and random weights both sides load; returns parameter counts."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  from transformers.utils import logging as hf_logging

  hf_logging.disable_progress_bar()  # save_pretrained's shard bar would clutter the report
  config = LlamaConfig(
    vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
    num_hidden_layers=args.layers, num_attention_heads=args.heads,
    num_key_value_heads=args.kv_heads, max_position_embeddings=max(2048, args.seq),
    tie_word_embeddings=False, rms_norm_eps=1e-5,
  )
  torch.manual_seed(args.seed)
  model = LlamaForCausalLM(config)
  model.save_pretrained(path)
  total = sum(p.numel() for p in model.parameters())
  embed = model.model.embed_tokens.weight.numel()
  return {"params": total, "params_no_embed": total - embed}


def cpu_name() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform

  return platform.processor() or platform.machine()


def run_side(args, side: str, ckpt: Path) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  if side == "torch-passive":
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # read once when OpenMP starts: hence a fresh process
  cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", side, "--ckpt", str(ckpt)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
  return {"error": f"exit {proc.returncode}", "log_tail": tail}


def fmt(x, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def main() -> None:
  args = parse_args()
  if args.worker:
    worker(args)
    return
  sides = [s for s in SIDES if s in args.sides.split(",")]
  loadavg = os.getloadavg()
  results: dict[str, dict] = {}
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = Path(tmp) / "llama"
    counts = write_checkpoint(args, ckpt)
    print(f"model: llama, {args.layers} layers, hidden {args.hidden}, heads {args.heads}/"
          f"{args.kv_heads} kv, ffn {args.intermediate}, vocab {args.vocab} (untied head); "
          f"{counts['params'] / 1e6:.1f}M params; batch {args.batch} x seq {args.seq}; "
          f"{args.warmup} warmup + {args.steps} timed steps", flush=True)
    for r in range(args.rounds):
      order = sides if r % 2 == 0 else sides[::-1]  # alternate so no side always runs first
      for side in order:
        res = run_side(args, side, ckpt)
        res["round"] = r
        if "error" in res:
          print(f"  {side}: FAILED ({res['error']})\n{res['log_tail']}", flush=True)
        else:
          print(f"  round {r} {side:13s} {res['tokens_per_s']:9.0f} tok/s  median step "
                f"{res['step_s_median'] * 1e3:7.1f} ms  first step {res['first_step_s']:6.2f} s",
                flush=True)
        best = results.get(side)
        if best is None or "error" in best or (
          "error" not in res and res["step_s_median"] < best["step_s_median"]
        ):
          results[side] = res
  loadavg_end = os.getloadavg()
  ok = {s: r for s, r in results.items() if "error" not in r}
  base = ok.get("torch", {}).get("tokens_per_s")
  base_cpu = ok.get("torch", {}).get("tokens_per_cpu_s")
  for r in ok.values():
    r["ratio_vs_torch"] = r["tokens_per_s"] / base if base else None
    r["cpu_ratio_vs_torch"] = r["tokens_per_cpu_s"] / base_cpu if base_cpu and "tokens_per_cpu_s" in r else None

  print("\nside            tok/s  tok/s(mean)  step ms(med)  CPU s/step  first step s  "
        "peak RSS MiB  vs torch (wall, CPU)  loss first -> last")
  for s, r in results.items():
    if "error" in r:
      print(f"{s:13s} failed: {r['error']}")
      continue
    print(f"{s:13s} {r['tokens_per_s']:7.0f} {r['tokens_per_s_mean']:12.0f} "
          f"{r['step_s_median'] * 1e3:13.1f} {fmt(r.get('cpu_s_median'), '11.2f')} "
          f"{r['first_step_s']:13.2f} {r['peak_rss_mib']:13.0f} "
          f"{fmt(r['ratio_vs_torch'], '10.2f')}x {fmt(r['cpu_ratio_vs_torch'], '6.2f')}x      "
          f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}")
    if "driver_error_after_loop" in r:
      print(f"{'':13s} (driver raised after its timed loop: {r['driver_error_after_loop']})")
  if args.breakdown:
    print("\nbreakdown (median ms): forward / forward+backward / clip+update")
    for s, r in ok.items():
      b = r.get("breakdown_s")
      if b:
        print(f"  {s:13s} {b['forward'] * 1e3:8.1f} {b['forward_backward'] * 1e3:8.1f} "
              f"{b['clip_and_update'] * 1e3:8.1f}")

  jax_r = ok.get("jax")
  ratio = jax_r["ratio_vs_torch"] if jax_r else None
  cpu_ratio = jax_r["cpu_ratio_vs_torch"] if jax_r else None
  print(f"\nratio jaxtune (float32) / torch: {fmt(ratio, '.2f')}x tokens/s, "
        f"{fmt(cpu_ratio, '.2f')}x tokens per CPU-second  (goal >= 1.0x)")
  torch_rows = {s: r for s, r in ok.items() if s in TORCH_SIDES}
  fastest = max(torch_rows, key=lambda s: torch_rows[s]["tokens_per_s"]) if torch_rows else None
  ratio_best = jax_r["tokens_per_s"] / torch_rows[fastest]["tokens_per_s"] if jax_r and fastest else None
  if fastest and fastest != "torch":
    print(f"ratio jaxtune (float32) / fastest torch row ({fastest}): {fmt(ratio_best, '.2f')}x")
  # The 1-minute load average before this script started: what other processes were doing (at
  # the end it mostly counts this script's own threads).
  busy = loadavg[0] > 0.5
  summary = {
    "benchmark": "cpu_throughput", "date": time.strftime("%Y-%m-%d"),
    "device": f"{cpu_name()}, {os.cpu_count()} cores", "loadavg_start": loadavg,
    "loadavg_end": loadavg_end, "model": {k: getattr(args, k) for k in (
      "layers", "hidden", "heads", "kv_heads", "intermediate", "vocab")} | counts,
    "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup,
    "rounds": args.rounds, "ratio_jax_vs_torch": ratio, "cpu_ratio_jax_vs_torch": cpu_ratio,
    "fastest_torch_side": fastest, "ratio_jax_vs_fastest_torch": ratio_best,
    "sides": {s: {k: v for k, v in r.items() if k != "log_tail"} for s, r in results.items()},
  }
  line = json.dumps(summary, separators=(",", ":"))
  print("JSON " + line)
  if args.json_out:
    Path(args.json_out).write_text(line + "\n")

  def tps(side):
    return fmt(ok.get(side, {}).get("tokens_per_s"), ".0f")

  cmd = "python benchmarks/cpu_throughput.py " + " ".join(sys.argv[1:])
  note = f"load avg {loadavg[0]:.1f} before the run" + (
    ": other processes were running" if busy else ": quiet")
  if fastest and fastest != "torch":
    note += f"; vs fastest torch row ({fastest}, {tps(fastest)} tok/s): {fmt(ratio_best, '.2f')}x"
  print("\nMarkdown row (| date | device | command | torch tok/s | jaxtune f32 tok/s | ratio | "
        "ratio per CPU-s | jaxtune bf16 tok/s | jaxtune first step s | peak RSS MiB torch / "
        "jaxtune | notes |):")
  rss = " / ".join(fmt(ok.get(s, {}).get("peak_rss_mib"), ".0f") for s in ("torch", "jax"))
  print(f"| {summary['date']} | {summary['device']} | `{cmd.strip()}` | {tps('torch')} | "
        f"{tps('jax')} | {fmt(ratio, '.2f')}x | {fmt(cpu_ratio, '.2f')}x | {tps('jax-bf16')} | "
        f"{fmt(jax_r['first_step_s'] if jax_r else None, '.1f')} | {rss} | {note} |")


if __name__ == "__main__":
  main()
