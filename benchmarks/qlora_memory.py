"""QLoRA memory: LoRA SFT on Gemma 3 270M with the frozen base in float32, bfloat16, int8, nf4.

Each variant is one `jaxtune.train.train_and_evaluate` run of the same recipe (chat SFT on the
chit-chat conversations, as configs/sft_smollm2.py, short rows and few steps so the whole table
takes minutes on a CPU) in its own subprocess, one after another, so each peak RSS is its own:

  float32  model.param_dtype=float32 (the reference row)
  bfloat16 model.param_dtype=bfloat16 (base and adapters in bfloat16)
  int8     model.quantize=int8, param_dtype float32 (adapters and scales float32)
  nf4      model.quantize=nf4, param_dtype float32

Compute is float32 in every row (CPUs emulate bfloat16 math). Reported per row: the bytes of
the model's arrays as the run holds them (`quantize.param_bytes`: 4-bit codes at half a byte),
the steady-state memory of training: the compiled step's argument and temporary bytes
(`memory_analysis()`), the RSS on entry to the first and to the last step and the bytes of
live JAX arrays then; the process's peak RSS (`resource.getrusage`, loading and compilation
included), the median
step time after the first two (compilation) steps, and the eval loss on the validation split
after the same steps on the same batches, each with its ratio to the float32 row. A quantized
base changes the function being fine-tuned, so its eval loss differs; the stated tolerance
(`--tolerance`, relative to float32's eval loss) says how much is accepted.

  nice -n 10 python benchmarks/qlora_memory.py            # the table (BENCHMARKS.md)
  nice -n 10 python benchmarks/qlora_memory.py --head-only  # the tied head's temporaries
  python benchmarks/qlora_memory.py --steps 4 --variants float32,nf4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # the reference first
  "float32": dict(param_dtype="float32", quantize=""),
  "nf4": dict(param_dtype="float32", quantize="nf4"),
  "int8": dict(param_dtype="float32", quantize="int8"),
  "bfloat16": dict(param_dtype="bfloat16", quantize=""),
}


def write_text_rows(path: Path, n: int) -> None:
  """The first `n` chit-chat conversations as plain-text SFT rows ('user: ...' lines): the
  Gemma 3 270M base GGUF has no chat template, so the text format stands in for chat SFT."""
  from jaxtune.data import builtin

  rows = builtin.chitchat(lambda *a: None)[:n]
  with open(path, "w") as f:
    for r in rows:
      text = "\n".join(f"{m['role']}: {m['content']}" for m in r.fields["messages"])
      f.write(json.dumps({"text": text}) + "\n")


def run_config(variant: str, steps: int, seq_len: int, batch: int, data: str):
  sys.path.insert(0, str(REPO / "configs"))
  import sft_smollm2

  from jaxtune.data import assets

  c = sft_smollm2.get_config("quick")
  c.model.source = str(assets.gemma3_gguf())
  c.model.param_dtype = VARIANTS[variant]["param_dtype"]
  c.model.compute_dtype = "float32"
  c.model.quantize = VARIANTS[variant]["quantize"]
  c.model.scan_layers = True  # one layer body to compile (the CPU compile dominates otherwise)
  c.data.source = data
  c.data.sft_format = "text"
  c.data.completion_only = False
  c.lora.dropout = 0.0  # identical batches and no randomness between the rows
  c.data.seq_len = seq_len
  c.train.steps = steps
  c.train.batch_size = c.train.eval_batch_size = batch
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.eval_at_start = False
  c.train.text_samples = 0
  c.train.progress = False
  c.checkpoint.every_steps = 0
  c.checkpoint.keep_best = 0
  c.report_to = ""
  return c


def rss() -> int:
  """The process's resident bytes now (Linux)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize()


class MeasuredStep:
  """The driver's jitted train step, unchanged, recording on every call the RSS and the bytes of
  live JAX arrays on entry (after the previous step, which `block_until_ready` waits for), and
  on the first the arguments' shapes, so `memory_analysis` can compile the same program again
  after the run (an explicitly compiled step cannot be called in its place: XLA's CPU client
  rejects the frozen uint4 codes' layout) and read its buffer sizes."""

  def __init__(self, jitted):
    self.jitted, self.specs, self.entries = jitted, None, []

  def __call__(self, state, batch, frozen):
    import jax

    jax.block_until_ready(state)
    self.entries.append((rss(), sum(x.nbytes for x in jax.live_arrays())))
    if self.specs is None:
      spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
      self.specs = jax.tree.map(spec, (state, batch, frozen))
    return self.jitted(state, batch, frozen)

  def memory_analysis(self):
    return self.jitted.lower(*self.specs).compile().memory_analysis()


def child(args) -> None:
  """One variant: train, then print one JSON line."""
  import jax

  from jaxtune import build, quantize, train

  held, steps = [], []
  split, jit = build.split_model, jax.jit

  def measured_split(model, config):  # the bytes of the model exactly as this run holds it
    held.append(quantize.param_bytes(model))
    return split(model, config)

  def measured_jit(fn, *a, **kw):  # the train step only (the driver's `counted_step`)
    jitted = jit(fn, *a, **kw)
    if getattr(fn, "__name__", "") == "counted_step":
      steps.append(MeasuredStep(jitted))
      return steps[-1]
    return jitted

  # build.model_and_optimizer looks split_model up at each call; the driver jits its step itself.
  build.split_model, train.jax.jit = measured_split, measured_jit
  cfg = run_config(args.variant, args.steps, args.seq_len, args.batch, args.data)
  with tempfile.TemporaryDirectory() as workdir:
    result = train.train_and_evaluate(cfg, workdir)
    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  train.jax.jit = jit
  times = [r["train/step_time_s"] for r in rows if "train/step_time_s" in r][2:]
  mem = steps[0].memory_analysis()
  (rss_first, _), (rss_last, live_last) = steps[0].entries[0], steps[0].entries[-1]
  print("RESULT " + json.dumps({
    "variant": args.variant,
    "param_bytes": held[0],
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    # The compiled step's own buffers: its arguments (state, batch, frozen base) and the
    # temporaries XLA allocates while it runs; their sum is what one step needs resident.
    "step_arg_bytes": mem.argument_size_in_bytes,
    "step_temp_bytes": mem.temp_size_in_bytes,
    # RSS on entry to the first step (model loaded, nothing compiled) and to the last one
    # (after N-1 steps); live: bytes of all JAX arrays at that last entry.
    "rss_before_steps": rss_first,
    "rss_after_steps": rss_last,
    "live_bytes_after_steps": live_last,
    "step_s": statistics.median(times),
    "eval_loss": result["eval"]["loss"],
  }), flush=True)


def head_only() -> None:
  """Compile only (nothing allocated): the chunked causal-LM loss and its gradient through Gemma 3
  270M's quantized tied head ([262144, 640], the benchmark's batch 2 x seq 64, chunk 128), with
  the head as `step.lm_head` gives it now (`quantize.tied_head`: `HEAD_ROWS` rows dequantized at
  a time) and as it did before (the whole table dequantized to float32 for the call). Prints the
  compiled program's temporary bytes for each."""
  import functools

  import jax
  import jax.numpy as jnp
  import qwix

  from jaxtune import losses, quantize
  from jaxtune.objectives import causal_lm

  V, D, B, T = 262144, 640, 2, 64
  for qtype in quantize.QTYPES:
    qt = "nf4" if qtype == "nf4" else jnp.dtype(jnp.int8)
    args = (jax.ShapeDtypeStruct((B, T, D), jnp.float32),
            jax.ShapeDtypeStruct((V, D), jnp.uint4 if qtype == "nf4" else jnp.int8),
            jax.ShapeDtypeStruct((V, D // quantize.BLOCK), jnp.float32),
            jax.ShapeDtypeStruct((B, T), jnp.int32))
    for how in ("whole table (before)", "blocks (now)"):

      def loss(h, codes, scale, ids, how=how, qt=qt):
        batch = {"input_ids": ids, "loss_mask": jnp.ones_like(ids)}
        if how.startswith("blocks"):
          head = (functools.partial(quantize._tied_logits, qt, None, V // quantize.HEAD_ROWS),
                  (codes, scale))
        else:
          head = (functools.partial(causal_lm._tied_head, None),
                  qwix.dequantize(qwix.QArray(codes, scale, qtype=qt)))
        total, weight = losses.chunked_causal_lm_loss(h, *head, batch, chunk=128)
        return total / weight

      mem = jax.jit(jax.value_and_grad(loss)).lower(*args).compile().memory_analysis()
      print(f"| {qtype} | {how} | {mem.temp_size_in_bytes / 2**20:.0f} |", flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--tolerance", type=float, default=0.02,
                 help="accepted |eval loss - float32's| / float32's")
  p.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
  p.add_argument("--data", help=argparse.SUPPRESS)
  p.add_argument("--head-only", action="store_true",
                 help="compile only the loss through the quantized tied head, before/after")
  args = p.parse_args()
  if args.head_only:
    return head_only()
  if args.variant:
    return child(args)
  rows = []
  data = Path(tempfile.mkdtemp()) / "chitchat_text.jsonl"
  write_text_rows(data, 200)
  for v in args.variants.split(","):
    t = time.time()
    cmd = [sys.executable, __file__, "--variant", v, "--steps", str(args.steps),
           "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--data", str(data)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
      sys.exit(f"{v}: failed (rc {done.returncode})\n{done.stderr[-3000:]}")
    rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
    # Each row as it comes, so a long run interrupted keeps the rows it finished.
    print(f"# {v}: {time.time() - t:.0f} s: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
  ref = next((r for r in rows if r["variant"] == "float32"), rows[0])
  mib = 2**20
  print(f"LoRA SFT, Gemma 3 270M, {args.steps} steps x batch {args.batch} x seq {args.seq_len}; "
        f"eval-loss tolerance {args.tolerance:.0%} of {ref['variant']}'s\n")
  print("| base | param MiB (x) | step args + temp MiB (x) | temp MiB (x) | RSS before -> after steps MiB "
        "(x after) | live arrays MiB (x) | peak RSS MiB (x) | step s (x) | eval loss (x) | within tolerance |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    rel = abs(r["eval_loss"] - ref["eval_loss"]) / ref["eval_loss"]
    r["step_bytes"] = r["step_arg_bytes"] + r["step_temp_bytes"]
    ref["step_bytes"] = ref["step_arg_bytes"] + ref["step_temp_bytes"]
    cell = lambda k, scale=mib, fmt=".0f": f"{r[k] / scale:{fmt}} ({r[k] / ref[k]:.2f})"  # noqa: B023
    print(f"| {r['variant']} | {cell('param_bytes')} | {cell('step_bytes')} | {cell('step_temp_bytes')} "
          f"| {r['rss_before_steps'] / mib:.0f} -> {cell('rss_after_steps')} "
          f"| {cell('live_bytes_after_steps')} | {cell('peak_rss')} | {cell('step_s', 1, '.2f')} "
          f"| {cell('eval_loss', 1, '.4f')} | {'yes' if rel <= args.tolerance else 'no'} ({rel:.1%}) |")


if __name__ == "__main__":
  main()
