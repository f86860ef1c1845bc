"""Training throughput, side by side: jaxtune's train step against transformers + torch.

One run fixes one Llama-style HF config (a preset in the shape of a real checkpoint, or explicit
shape flags) and times a full training step of it with every requested "side":

  torch          LlamaForCausalLM (sdpa attention), torch.optim.AdamW, grad clip, loss on all
                 tokens: the loop an HF user writes by hand. On a GPU: float32 master weights
                 under bfloat16 autocast (SDPA picks flash attention), fused AdamW.
  torch-passive  the same with OMP_WAIT_POLICY=PASSIVE (CPU): torch's OpenMP threads sleep instead
                 of spinning at barriers. On a machine whose cores other processes also use, a
                 spinning thread waits for a descheduled peer, and torch's steps can take 10-100x
                 longer; on a quiet machine this row should match `torch`.
  torch-compile  the same as `torch` with `torch.compile(model)` (inductor; needs a C++ compiler).
  jax            jaxtune: the model from `build.load_model`, the optimizer from
                 `optim.build_optimizer`, and `step.train_step` jitted exactly as
                 `train.train_and_evaluate` jits it (state/batch shardings, donated state).
                 float32 master weights; compute in float32 on CPU, bfloat16 on a GPU.
  jax-bf16       the same with bfloat16 compute everywhere. CPUs emulate much of bfloat16 math,
                 so on CPU this row shows the cost of the default compute dtype.
  jax-driver     `train.train_and_evaluate` itself on `data.kind='synthetic'` rows of the same
                 shape, step times read back from metrics.jsonl: the whole driver's overhead
                 (host batching, prefetch, metric fetches), but on byte-level token ids.

With --lora-rank R the jax sides train jaxtune LoRA adapters (config.lora, default targets) and
the torch sides PEFT LoRA adapters on the same projections with the same rank and alpha.

Weights. Small models (up to --shared-ckpt-max-params) are written once as an HF checkpoint that
both sides load, so their first and last losses are printed side by side as a check that they
compute the same thing. Larger ones are never written to disk: jaxtune initialises the preset
directly on the device (`presets.init`: eval_shape, then a jitted random init) and torch builds
`LlamaForCausalLM` from the same HF config with its own random init; the shapes and the work per
step are identical, the weights (and so the losses) are not.

Every side runs in its own subprocess, one after another, so peak memory is per side and the two
frameworks never share (or fight over) threads or device memory. Warmup steps are excluded; the
first step (jit or torch.compile compilation included) is reported on its own. Tokens/s is
batch * seq over the median step time. MFU counts model FLOPs only (remat's recomputation is
not credited): 6 x matmul parameters x tokens for a full fine-tune (4 x for LoRA's frozen
weights: forward and input gradients, no weight gradients, plus 6 x the adapters), plus causal
attention 6 x layers x batch x seq^2 x heads x head_dim, over `writer.device_peak_flops`. Peak
memory is the device's peak bytes in use (jax `memory_stats`, `torch.cuda.max_memory_allocated`)
on a GPU and the process's peak RSS on CPU.

  python benchmarks/train_throughput.py --model 1b --seq 2048 --batch 8 --sides torch,torch-compile,jax
  python benchmarks/train_throughput.py --model 8b --seq 4096 --batch 1 --lora-rank 16 --remat full
  python benchmarks/train_throughput.py --find-max --seq 2048          # largest full fine-tune (GPU)
  python benchmarks/train_throughput.py --device cpu --layers 2 --hidden 64 --seq 32 --sides torch,jax

`benchmarks/cpu_throughput.py` is this script with CPU defaults and issue 3's report format.
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
from types import SimpleNamespace

SIDES = ("torch", "torch-passive", "torch-compile", "jax", "jax-bf16", "jax-driver")
TORCH_SIDES = ("torch", "torch-passive", "torch-compile")
DEFAULT_SIDES = "torch,jax,jax-bf16"
MODELS = {"125m": "llama-125m", "1b": "llama3-1b", "3b": "llama3-3b", "8b": "llama3-8b"}
# jaxtune's default weight-decay exclusion (optim.DEFAULT_EXCLUDE), applied to torch names too so
# both optimizers decay the same tensors (jaxtune paths look like 'layers/0/mlp/up_proj/kernel',
# torch names like 'model.layers.0.mlp.up_proj.weight'; both regexes match the same tensors).
TORCH_NO_DECAY = r"(^|\.)bias$|norm|embed"
# PEFT names for jaxtune's default LoRA targets on a Llama (lora.DEFAULT_TARGETS).
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemoryError")


def build_parser(description: str, default_device: str = "auto") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  m = p.add_argument_group("model (one HF LlamaConfig for both sides)")
  m.add_argument("--model", default="", help=f"preset shape, {','.join(MODELS)} (or a "
                 "jaxtune preset name); overrides the shape flags below")
  m.add_argument("--layers", type=int, default=4, help="decoder layers")
  m.add_argument("--hidden", type=int, default=256, help="model width")
  m.add_argument("--heads", type=int, default=4, help="query heads")
  m.add_argument("--kv-heads", type=int, default=4, help="< --heads for grouped-query attention")
  m.add_argument("--intermediate", type=int, default=688, help="MLP width")
  m.add_argument("--vocab", type=int, default=32000, help="vocabulary (untied output head)")
  m.add_argument("--shared-ckpt-max-params", type=float, default=300e6,
                 help="write one checkpoint both sides load (same weights, comparable losses) "
                      "up to this many parameters; above, each side initialises its own")
  r = p.add_argument_group("run")
  r.add_argument("--device", choices=("auto", "cpu", "gpu"), default=default_device,
                 help="auto: gpu when an NVIDIA driver is present")
  r.add_argument("--seq", type=int, default=256, help="tokens per row")
  r.add_argument("--batch", type=int, default=8, help="rows per step")
  r.add_argument("--steps", type=int, default=20, help="timed steps per side")
  r.add_argument("--warmup", type=int, default=3, help="untimed steps, the first one included")
  r.add_argument("--sides", default=DEFAULT_SIDES, help=f"comma-separated, from {','.join(SIDES)}")
  r.add_argument("--lora-rank", type=int, default=0, help="> 0: LoRA (jaxtune vs PEFT) of this rank")
  r.add_argument("--lora-alpha", type=float, default=16.0)
  r.add_argument("--remat", choices=("none", "full", "dots"), default="none",
                 help="activation recomputation (torch: gradient checkpointing when not none)")
  r.add_argument("--scan-layers", action="store_true",
                 help="jax sides: stacked layer weights run by one lax.scan (model.scan_layers)")
  r.add_argument("--find-max", action="store_true",
                 help="GPU: grow the model (125m, 1b, 3b, 8b) then the batch until the jax side "
                      "runs out of memory; report the largest full fine-tune that fits")
  r.add_argument("--lm-loss-chunk", type=int, default=-1,
                 help="jax sides: positions per chunk of the causal-LM loss (0: full logits; "
                      "-1: jaxtune's choice for the backend and vocabulary)")
  r.add_argument("--rounds", type=int, default=1,
                 help="run every side this many times, alternating order; keep each side's "
                      "fastest round (on a busy machine the fastest is the least disturbed)")
  r.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
  r.add_argument("--seed", type=int, default=0)
  r.add_argument("--torch-adamw", choices=("default", "foreach", "fused"), default="default",
                 help="torch AdamW implementation (default: fused on a GPU, torch's choice on CPU)")
  r.add_argument("--breakdown", action="store_true",
                 help="also time forward, forward+backward and the optimizer update alone")
  r.add_argument("--jax-profile", default="",
                 help="directory for a jax.profiler trace of 3 steps of the jax sides")
  r.add_argument("--json-out", default="", help="also write the summary JSON to this file")
  r.add_argument("--side-log", default="",
                 help="append every side's own output (its phase timings included) to this file "
                      "as it runs: what a side did survives even when the run is killed")
  o = p.add_argument_group("optimizer (identical on both sides)")
  o.add_argument("--lr", type=float, default=1e-4)
  o.add_argument("--b1", type=float, default=0.9)
  o.add_argument("--b2", type=float, default=0.999)
  o.add_argument("--eps", type=float, default=1e-8)
  o.add_argument("--weight-decay", type=float, default=0.01)
  o.add_argument("--clip", type=float, default=1.0, help="global grad-norm clip")
  # Internal: the parent re-runs this file with these to measure one side in a fresh process.
  p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
  p.add_argument("--spec", help=argparse.SUPPRESS)
  return p


def parse_args(argv=None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
  p = parser or build_parser(__doc__.split("\n\n")[0])
  args = p.parse_args(argv)
  if args.worker:
    return argparse.Namespace(**json.loads(args.spec), worker=args.worker)
  unknown = set(args.sides.split(",")) - set(SIDES)
  if unknown:
    p.error(f"--sides: unknown {sorted(unknown)}; choose from {SIDES}")
  if args.steps < 1 or args.warmup < 1:
    p.error("--steps and --warmup must be at least 1 (the first step compiles)")
  if args.model and args.model not in MODELS and args.model not in MODELS.values():
    p.error(f"--model: unknown {args.model!r}; choose from {sorted(MODELS)}")
  if args.device == "auto":
    args.device = "gpu" if has_nvidia_gpu() else "cpu"
  if args.find_max and args.device != "gpu":
    p.error("--find-max measures device memory: it needs --device gpu (no GPU found)")
  args.hf = hf_config(args)
  return args


def has_nvidia_gpu() -> bool:
  return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def hf_config(args) -> dict:
  """The one HF Llama config dict both sides build; shape flags are synced to it."""
  if args.model:
    from jaxtune.models import presets

    hf = dict(presets.PRESETS[MODELS.get(args.model, args.model)])
    # transformers wants llama3 rope's original length strictly below the maximum.
    hf["max_position_embeddings"] = max(hf["max_position_embeddings"] * 2, args.seq)
    args.layers, args.hidden = hf["num_hidden_layers"], hf["hidden_size"]
    args.heads, args.kv_heads = hf["num_attention_heads"], hf["num_key_value_heads"]
    args.intermediate, args.vocab = hf["intermediate_size"], hf["vocab_size"]
    return hf
  return {
    "model_type": "llama", "vocab_size": args.vocab, "hidden_size": args.hidden,
    "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
    "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
    "max_position_embeddings": max(2048, args.seq), "tie_word_embeddings": False,
    "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "attention_dropout": 0.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
  }


def param_counts(hf: dict) -> dict:
  """Parameters of the Llama `hf` describes, counted from its shapes (nothing is built)."""
  d, f, v, n_layers = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"], hf["num_hidden_layers"]
  heads, kv = hf["num_attention_heads"], hf["num_key_value_heads"]
  hd = hf.get("head_dim") or d // heads
  attn = d * heads * hd * 2 + d * kv * hd * 2  # q, o and k, v projections
  layer_matmul = attn + 3 * d * f
  tied = hf.get("tie_word_embeddings", False)
  embed = v * d
  total = embed + (0 if tied else embed) + n_layers * (layer_matmul + 2 * d) + d
  # The output head is a matmul (tied or not); the input embedding is a gather.
  matmul = n_layers * layer_matmul + embed
  return {"params": total, "params_no_embed": total - embed, "matmul_params": matmul,
          "head_dim": hd}


def lora_params(hf: dict, rank: int) -> int:
  d, f, n_layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
  heads, kv = hf["num_attention_heads"], hf["num_key_value_heads"]
  hd = hf.get("head_dim") or d // heads
  shapes = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, f), (d, f), (f, d)]
  return n_layers * sum(rank * (i + o) for i, o in shapes)


def flops_per_step(args) -> float:
  """Model FLOPs of one training step (see the module docstring)."""
  c = param_counts(args.hf)
  tokens = args.batch * args.seq
  if args.lora_rank:
    dense = 4 * c["matmul_params"] * tokens + 6 * lora_params(args.hf, args.lora_rank) * tokens
  else:
    dense = 6 * c["matmul_params"] * tokens
  attention = 6 * args.layers * args.batch * args.seq ** 2 * args.heads * c["head_dim"]
  return dense + attention


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


def phase(name: str, since: float) -> float:
  """Seconds since `since`, printed as a side's phase (to stderr, which --side-log keeps as it
  is written)."""
  seconds = time.perf_counter() - since
  print(f"phase {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
  return seconds


# -------------------------------------------------------------------------------------- torch


def _torch_model(args, torch):
  """The HF model on the target device: the shared checkpoint, or a random init of the config."""
  from transformers import LlamaConfig, LlamaForCausalLM

  dev = "cuda" if args.device == "gpu" else "cpu"
  if args.ckpt:
    model = LlamaForCausalLM.from_pretrained(args.ckpt, attn_implementation="sdpa",
                                             dtype=torch.float32).to(dev)
  else:
    config = LlamaConfig(**args.hf)
    config._attn_implementation = "sdpa"
    with torch.device(dev):  # initialise on the device: a 3B model in f32 fills host RAM
      model = LlamaForCausalLM(config).to(torch.float32)
  if args.remat != "none":
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
  if args.lora_rank:
    import peft

    model = peft.get_peft_model(model, peft.LoraConfig(
      r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=PEFT_TARGETS))
    if args.remat != "none":
      model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
  return model, dev


def run_torch(args, compile_model: bool) -> dict:
  import contextlib

  import torch

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  t0 = time.perf_counter()
  model, dev = _torch_model(args, torch)
  gpu = dev == "cuda"
  if gpu:
    torch.cuda.synchronize()
  setup_s = phase("model built", t0)
  model.train()
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if p.requires_grad:
      (no_decay if re.search(TORCH_NO_DECAY, name) else decay).append(p)
  adamw = "fused" if args.torch_adamw == "default" and gpu else args.torch_adamw
  impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adamw]
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
    lr=args.lr, betas=(args.b1, args.b2), eps=args.eps, **impl,
  )
  fwd = torch.compile(model) if compile_model else model
  mask = torch.ones((args.batch, args.seq), dtype=torch.long, device=dev)
  # GPU: float32 master weights, bfloat16 matmuls and attention (the usual mixed precision loop).
  autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if gpu else contextlib.nullcontext
  trainable = [p for p in model.parameters() if p.requires_grad]

  def train_step(i: int) -> float:
    ids = torch.from_numpy(host_batch(args, i)).long().to(dev, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = fwd(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    if args.clip > 0:
      torch.nn.utils.clip_grad_norm_(trainable, args.clip)
    opt.step()
    return loss.item()  # waits for the step: timing below is of finished work

  t = time.perf_counter()
  first_loss = train_step(0)
  first = phase("first step", t)
  for i in range(1, args.warmup):
    train_step(i)
  times, cpu = [], []
  for i in range(args.warmup, args.warmup + args.steps):
    t, c = time.perf_counter(), time.process_time()
    last_loss = train_step(i)  # torch on CPU is synchronous: the step is done when it returns
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  extra = {"setup_s": setup_s, "first_loss": first_loss, "last_loss": last_loss,
           "threads": torch.get_num_threads(),
           "versions": f"torch {torch.__version__}", "adamw": adamw or "default"}
  if gpu:
    extra["device_kind"] = torch.cuda.get_device_name()
    extra["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
  out = summarize(times, args, first, cpu, **extra)
  if args.breakdown:
    ids = torch.from_numpy(host_batch(args, 0)).long().to(dev)

    def forward():
      with autocast():  # builds the autograd graph, as training does
        fwd(input_ids=ids, attention_mask=mask, labels=ids).loss.item()

    def forward_backward():
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = fwd(input_ids=ids, attention_mask=mask, labels=ids).loss
      loss.backward()
      if gpu:
        torch.cuda.synchronize()

    def update():
      if args.clip > 0:
        torch.nn.utils.clip_grad_norm_(trainable, args.clip)
      opt.step()
      if gpu:
        torch.cuda.synchronize()

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
  if args.ckpt:
    c.model.source = args.ckpt
  elif args.model:
    c.model.source = "preset:" + MODELS.get(args.model, args.model)
  else:
    # Explicit shape flags too big to share a checkpoint: make them a preset of this worker
    # process, so jaxtune initialises them on the device like any preset.
    from jaxtune.models import presets

    presets.PRESETS["bench-llama"] = args.hf
    c.model.source = "preset:bench-llama"
  c.model.param_dtype = "float32"
  c.model.compute_dtype = compute_dtype
  c.model.remat = args.remat
  c.model.scan_layers = args.scan_layers
  c.lora.rank, c.lora.alpha = args.lora_rank, args.lora_alpha
  c.train.batch_size = args.batch
  c.train.steps = args.warmup + args.steps
  c.data.seq_len = args.seq
  o = c.optim
  o.name, o.learning_rate, o.b1, o.b2, o.eps = "adamw", args.lr, args.b1, args.b2, args.eps
  o.weight_decay, o.grad_clip_norm = args.weight_decay, args.clip
  o.schedule, o.warmup_steps = "constant", 0  # torch's AdamW runs at a constant lr
  return c


def jax_compute_dtype(args, side: str) -> str:
  """`jax` computes in float32 on CPU (issue 3's comparison) and bfloat16 on a GPU."""
  return "bfloat16" if side == "jax-bf16" or args.device == "gpu" else "float32"


def run_jax(args, compute_dtype: str) -> dict:
  import jax
  import numpy as np

  from jaxtune import build, sharding, step
  from jaxtune.data import pipeline

  c = _jax_config(args, compute_dtype)
  # The driver's own sections (train.train_and_evaluate: mesh, then model, optimizer, state and
  # shardings from build.build_state), so what is timed is the step the driver runs.
  mesh = sharding.make_mesh(**c.mesh)
  total = args.warmup + args.steps
  t0 = time.perf_counter()
  built = build.build_state(c, mesh, None, total)
  jax.block_until_ready((built.state, built.frozen))  # random init runs asynchronously
  setup_s = phase("model and state built", t0)
  graphdef, tx, state, state_sh = built.train_graphdef, built.tx, built.state, built.state_sh
  frozen = built.frozen  # None unless LoRA
  ones = np.ones((args.batch, args.seq), np.int32)

  def batch_of(i: int) -> dict:
    # What a tokenized, unpacked data set gives the driver: ids, attention mask, loss mask.
    return {"input_ids": host_batch(args, i), "attention_mask": ones, "loss_mask": ones}

  batch_sh = pipeline.batch_shardings(mesh, batch_of(0))
  step_cfg = step.StepConfig(task="causal_lm", micro_batches=1, skip_nonfinite=False,
                             optim_cfg=c.optim, class_weights=None, lm_loss_chunk=args.lm_loss_chunk)
  train_fn = jax.jit(lambda s, b, f: step.train_step(graphdef, tx, step_cfg, s, b, f),
                     in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None),
                     donate_argnums=(0,))

  def train_step(state, i: int):
    state, m = train_fn(state, pipeline.to_device(batch_of(i), batch_sh), frozen)
    return jax.block_until_ready((state, m))

  extra = {"setup_s": setup_s, "threads": os.cpu_count(), "versions": f"jax {jax.__version__}",
           "devices": len(jax.devices()), "compute_dtype": compute_dtype,
           "device_kind": jax.devices()[0].device_kind}
  with sharding.use_mesh(mesh):
    t = time.perf_counter()
    state, m = train_step(state, 0)
    first = phase("first step (compile included)", t)
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
    stats = jax.devices()[0].memory_stats()  # None on CPU
    if stats and "peak_bytes_in_use" in stats:
      extra["peak_device_mib"] = stats["peak_bytes_in_use"] / 2**20
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

  from jaxtune import losses, step
  from jaxtune.data import pipeline

  batch = pipeline.to_device(host, batch_sh)
  params = state["params"]

  def loss(p, b):
    model = nnx.merge(graphdef, p)
    logits = model(b["input_ids"], **step.model_kwargs(b))
    s, w = losses.causal_lm_loss(logits, b)
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

  c = _jax_config(args, jax_compute_dtype(args, "jax"))
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
    out = run_jax(args, jax_compute_dtype(args, side))
  print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------- parent


def write_checkpoint(args, path: Path) -> None:
  """The one HF config and random weights both sides load."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  from transformers.utils import logging as hf_logging

  hf_logging.disable_progress_bar()  # save_pretrained's shard bar would clutter the report
  torch.manual_seed(args.seed)
  model = LlamaForCausalLM(LlamaConfig(**args.hf))
  built = sum(p.numel() for p in model.parameters())
  if built != param_counts(args.hf)["params"]:  # the MFU numerator counts from the same shapes
    raise RuntimeError(f"param_counts: {param_counts(args.hf)['params']} != {built} built by torch")
  model.save_pretrained(path)


def cpu_name() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform

  return platform.processor() or platform.machine()


def run_side(args, side: str, ckpt: Path | None) -> dict:
  from jaxtune import xla_flags

  platform = "cuda" if args.device == "gpu" else "cpu"
  env = dict(os.environ, JAX_PLATFORMS=platform, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  if side == "torch-passive":
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # read once when OpenMP starts: hence a fresh process
  if side.startswith("jax"):
    xla_flags.apply(env, platform)  # what `jaxtune train` runs with
    # JAX preallocates 75% of GPU memory by default; a fit test wants (nearly) all of it.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  spec = {k: v for k, v in vars(args).items() if k not in ("worker", "spec")}
  spec["ckpt"] = str(ckpt) if ckpt else ""
  cmd = [sys.executable, __file__, "--worker", side, "--spec", json.dumps(spec)]
  if args.side_log:
    # The side writes its stderr straight into the file, so its phases are there even if this
    # process is killed mid-side (a lease's deadline); the error tail is read back from it.
    with open(args.side_log, "a") as f:
      f.write(f"\n=== {side}: {describe(args, param_counts(args.hf))}\n")
      f.flush()
      start = f.tell()
      proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    with open(args.side_log) as f:
      f.seek(start)
      err = f.read()
  else:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    err = proc.stderr
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  log = proc.stdout + err
  tail = "\n".join(log.splitlines()[-25:])
  return {"error": f"exit {proc.returncode}", "oom": any(m in log for m in OOM_MARKERS),
          "log_tail": tail}


def fmt(x, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def describe(args, counts: dict) -> str:
  name = f"{args.model} " if args.model else ""
  lora = f"; LoRA rank {args.lora_rank}" if args.lora_rank else ""
  return (f"model: {name}llama, {args.layers} layers, hidden {args.hidden}, heads {args.heads}/"
          f"{args.kv_heads} kv, ffn {args.intermediate}, vocab {args.vocab} "
          f"({'tied' if args.hf.get('tie_word_embeddings') else 'untied'} head); "
          f"{counts['params'] / 1e6:.1f}M params; batch {args.batch} x seq {args.seq}; "
          f"{args.warmup} warmup + {args.steps} timed steps{lora}; remat {args.remat}; {args.device}")


def measure(args) -> dict:
  """Every requested side, in its own process; the summary dict (printed as JSON)."""
  sides = [s for s in SIDES if s in args.sides.split(",")]
  loadavg = os.getloadavg()
  counts = param_counts(args.hf)
  shared = counts["params"] <= args.shared_ckpt_max_params
  results: dict[str, dict] = {}
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = Path(tmp) / "llama" if shared else None
    if ckpt:
      write_checkpoint(args, ckpt)
    print(describe(args, counts), flush=True)
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
  flops = flops_per_step(args)
  from jaxtune import writer

  for r in ok.values():
    r["ratio_vs_torch"] = r["tokens_per_s"] / base if base else None
    r["cpu_ratio_vs_torch"] = r["tokens_per_cpu_s"] / base_cpu if base_cpu and "tokens_per_cpu_s" in r else None
    peak = writer.device_peak_flops(SimpleNamespace(device_kind=r.get("device_kind", "cpu")))
    r["mfu"] = writer.mfu(flops, r["step_s_median"], 1, peak) if peak else None
    r["peak_memory_mib"] = r.get("peak_device_mib", r["peak_rss_mib"])
  kinds = [r["device_kind"] for r in ok.values() if r.get("device_kind", "cpu") != "cpu"]
  device = kinds[0] if args.device == "gpu" and kinds else f"{cpu_name()}, {os.cpu_count()} cores"
  return {
    "date": time.strftime("%Y-%m-%d"), "device": device, "platform": args.device,
    "loadavg_start": loadavg, "loadavg_end": loadavg_end,
    "model": {k: getattr(args, k) for k in (
      "model", "layers", "hidden", "heads", "kv_heads", "intermediate", "vocab")} | counts,
    "weights": "one shared checkpoint" if shared else "independent random init per side",
    "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup,
    "rounds": args.rounds, "lora_rank": args.lora_rank, "remat": args.remat,
    "flops_per_step": flops,
    "sides": {s: {k: v for k, v in r.items() if k != "log_tail"} for s, r in results.items()},
  }


def emit_json(args, summary: dict) -> None:
  line = json.dumps(summary, separators=(",", ":"))
  print("JSON " + line)
  if args.json_out:
    Path(args.json_out).write_text(line + "\n")


def command() -> str:
  return f"python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".strip()


def report(args, summary: dict) -> None:
  """This script's report: one line per side, the JSON, one BENCHMARKS.md row per side."""
  res = summary["sides"]
  mem = "peak device MiB" if args.device == "gpu" else "peak RSS MiB"
  print(f"\nside              tok/s  step ms(med)    MFU  first step s  {mem:>15s}  vs torch  "
        "loss first -> last")
  for s, r in res.items():
    if "error" in r:
      print(f"{s:13s} failed: {r['error']}{' (out of memory)' if r.get('oom') else ''}")
      continue
    print(f"{s:13s} {r['tokens_per_s']:9.0f} {r['step_s_median'] * 1e3:13.1f} "
          f"{pct(r['mfu']):>6s} {r['first_step_s']:13.2f} "
          f"{r['peak_memory_mib']:16.0f} {fmt(r['ratio_vs_torch'], '8.2f')}x  "
          f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}")
  if summary["weights"] != "one shared checkpoint":
    print("(each side initialised its own random weights: same shapes and work, different losses)")
  emit_json(args, summary)
  m = summary["model"]
  shape = f"{m['model'] or 'llama'} {m['params'] / 1e6:.1f}M" + (
    f", LoRA r{args.lora_rank}" if args.lora_rank else "") + (
    f", remat {args.remat}" if args.remat != "none" else "")
  print("\nMarkdown rows (| date | device | command | model | batch x seq | side | tok/s | "
        "step ms | MFU | peak memory MiB | first step s | vs torch |):")
  for s, r in res.items():
    if "error" in r:
      continue
    print(f"| {summary['date']} | {summary['device']} | `{command()}` | {shape} | "
          f"{args.batch} x {args.seq} | {s} | {r['tokens_per_s']:.0f} | "
          f"{r['step_s_median'] * 1e3:.1f} | {pct(r['mfu'])} | "
          f"{r['peak_memory_mib']:.0f} | {r['first_step_s']:.1f} | "
          f"{fmt(r['ratio_vs_torch'], '.2f')}x |")


def find_max(args) -> dict:
  """The largest full fine-tune whose jax training step fits: models grow, then the batch."""
  import copy

  def trial(model: str, batch: int) -> dict:
    a = copy.copy(args)
    a.model, a.batch, a.steps, a.warmup, a.lora_rank = model, batch, 2, 1, 0
    a.hf = hf_config(a)
    res = run_side(a, "jax", None)
    status = "fits" if "error" not in res else ("out of memory" if res.get("oom") else "FAILED")
    print(f"  {model:5s} batch {batch:3d} x seq {args.seq}: {status}"
          + (f", peak {res.get('peak_device_mib', 0) / 1024:.1f} GiB" if status == "fits" else ""),
          flush=True)
    if status == "FAILED":
      print(res["log_tail"])
    return {"model": model, "batch": batch, "fits": status == "fits",
            "params": param_counts(a.hf)["params"], **{k: v for k, v in res.items() if k != "log_tail"}}

  trials, best = [], None
  for model in MODELS:
    t = trial(model, 1)
    trials.append(t)
    if not t["fits"]:
      break
    best = t
  batch = 2
  while best is not None and batch <= 256:
    t = trial(best["model"], batch)
    trials.append(t)
    if not t["fits"]:
      break
    best, batch = t, batch * 2
  summary = {"benchmark": "train_throughput_find_max", "date": time.strftime("%Y-%m-%d"),
             "seq": args.seq, "remat": args.remat, "largest_full_finetune": best, "trials": trials}
  if best:
    print(f"\nlargest full fine-tune that fits: {best['model']} ({best['params'] / 1e9:.2f}B params) "
          f"at batch {best['batch']} x seq {args.seq}, remat {args.remat}")
  emit_json(args, summary)
  return summary


def main(argv=None, parser: argparse.ArgumentParser | None = None) -> dict:
  args = parse_args(argv, parser)
  if args.worker:
    worker(args)
    return {}
  if args.find_max:
    return find_max(args)
  summary = {"benchmark": "train_throughput", **measure(args)}
  report(args, summary)
  return summary


if __name__ == "__main__":
  main()
