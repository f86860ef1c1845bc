"""LoRA adapters: wrap linear layers, split trainable from frozen, merge, and export for PEFT.

A LoRA linear keeps its base `kernel` [in, out] (and `bias`) where they were, frozen, and adds
a low-rank update on its own parameters:

  y = x @ kernel + bias + scale * dropout(x) @ lora_a @ lora_b,   scale = alpha / r

`lora_a` [in, r] starts like PEFT's (kaiming-uniform, or normal with std 1/r) and `lora_b`
[r, out] at zero, so a freshly adapted model computes exactly what the base model computes.
The adapter matrices are `LoRAParam`s (an `nnx.Param` subclass) with logical axes
(base in-axis, 'lora_rank') and ('lora_rank', base out-axis), so `nnx.split(model, LoRAParam,
...)` separates them and `jaxtune.sharding` places them next to the kernel they adapt.

Parameter paths only grow: `layers/0/self_attn/q_proj/kernel` stays where the HF tables expect
it, and the adapter sits beside it at `.../q_proj/lora_a` and `.../q_proj/lora_b`.

How the driver uses it (see `split_trainable`): build or load the model, `apply` LoRA, then
split it into (graphdef, trainable, frozen). Only `trainable` (the adapters plus base params
matching `lora.train_also`, e.g. a classification head) goes to the optimizer and into
checkpoints; `frozen` is passed to the jitted step as a separate, non-donated argument, and
`combine(graphdef, trainable, frozen)` rebuilds the model inside it. For export, `merge` folds
the adapters into the kernels (a plain model `jaxtune.hf.save` writes as standard HF weights),
and `save_adapter` writes a PEFT adapter directory instead.

Dropout on the LoRA input path needs a key at call time, like `layers.Dropout`: model code
passes it as `proj(x, lora_rng=rng())` (plain `layers.Linear` accepts and ignores it). A LoRA
layer in training mode with `lora.dropout > 0` that gets no key raises rather than silently
skipping dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxtune import quantize, sharding
from jaxtune.errors import ConfigError
from jaxtune.models import layers
from jaxtune.patterns import compile_pattern

INITS = ("kaiming", "gaussian")

# Attention and MLP projections of every family: Llama-style decoders (q/k/v/o, gate/up/down),
# GPT-2 (c_attn, c_proj, c_fc), BERT (query/key/value, attention/output/dense,
# intermediate/dense, output/dense; not pooler/dense or the MLM transform) and MPNet
# (attn/q, attn/k, attn/v, attn/o and BERT's feed-forward; not the classification head's dense).
DEFAULT_TARGETS = (
  r"(^|/)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc"
  r"|query|key|value|intermediate/dense|output/dense|attn/[qkvo])$"
)
# Classification heads are new for a fine-tune, so they train fully next to the adapters.
DEFAULT_TRAIN_ALSO = r"(^|/)(score|classifier)(/|$)"

# jaxtune task -> PEFT task_type (None: PEFT's plain PeftModel).
_PEFT_TASKS = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS", "encoder": "FEATURE_EXTRACTION"}


def default_config() -> ml_collections.ConfigDict:
  """The `lora` section of the run config. Every field has a real default."""
  c = ml_collections.ConfigDict()
  c.rank = 0  # r; 0 = LoRA off (full fine-tuning)
  c.alpha = 16.0  # scale = alpha / r (alpha / sqrt(r) with use_rslora)
  c.dropout = 0.0  # on the LoRA input path only, in training mode
  c.targets = DEFAULT_TARGETS  # regex (re.search) over module paths, e.g. 'layers/0/mlp/up_proj'
  c.train_also = DEFAULT_TRAIN_ALSO  # regex over param paths trained fully; '' = none
  c.init = "kaiming"  # lora_a init, as PEFT: 'kaiming' (uniform, bound 1/sqrt(in)) or 'gaussian'
  c.use_rslora = False  # rank-stabilised scaling alpha / sqrt(r)
  return c


@dataclasses.dataclass(frozen=True)
class LoRASpec:
  """The resolved settings `apply` used, kept on the model (static) for `save_adapter`."""

  rank: int
  alpha: float
  dropout: float
  targets: str
  train_also: str
  init: str
  use_rslora: bool


def _compile(key: str, pattern: str) -> re.Pattern | None:
  return compile_pattern(f"lora.{key}", pattern)


def resolve(cfg: Mapping | None) -> LoRASpec:
  """Check a `lora` section (or a whole run config holding one) against the defaults."""
  c = default_config()
  if cfg is not None:
    if "lora" in cfg:  # the whole run config: take its section
      cfg = cfg["lora"]
    unknown = sorted(set(cfg.keys()) - set(c.keys()))
    if unknown:
      raise ConfigError(
        f"unknown LoRA config key(s) {['lora.' + k for k in unknown]}; known: {sorted(c)}"
      )
    for k in cfg.keys():
      c[k] = cfg[k]
  if int(c.rank) != c.rank or c.rank < 0:
    raise ConfigError(f"lora.rank={c.rank!r} must be an integer >= 0 (0 = LoRA off)")
  if not c.alpha > 0:
    raise ConfigError(f"lora.alpha={c.alpha!r} must be > 0")
  if not 0.0 <= c.dropout < 1.0:
    raise ConfigError(f"lora.dropout={c.dropout!r} must be in [0, 1)")
  if c.init not in INITS:
    raise ConfigError(f"lora.init={c.init!r}: expected one of {INITS}")
  if not c.targets:
    raise ConfigError("lora.targets is empty: it must name the modules to adapt")
  _compile("targets", c.targets)
  _compile("train_also", c.train_also)
  return LoRASpec(rank=int(c.rank), alpha=float(c.alpha), dropout=float(c.dropout),
                  targets=c.targets, train_also=c.train_also, init=c.init,
                  use_rslora=bool(c.use_rslora))


# ------------------------------------------------------------------------------- the layer


class LoRAParam(nnx.Param):
  """A LoRA adapter matrix: trained while the base `nnx.Param`s it adapts stay frozen."""


@functools.cache
def _initializer(kind: str, shape: tuple[int, ...], dtype, out_sharding):
  """A jitted `key -> array` placed straight into `out_sharding` (cached per shape/sharding)."""

  def init(key):
    if kind == "zeros":
      return jnp.zeros(shape, dtype)
    if kind == "kaiming":
      # torch's kaiming_uniform_(a=sqrt(5)) on lora_A.weight [r, in]: bound = 1 / sqrt(in).
      bound = 1.0 / math.sqrt(shape[0])
      return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)
    # PEFT's init_lora_weights='gaussian': normal with std 1 / r.
    return (jax.random.normal(key, shape, jnp.float32) / shape[1]).astype(dtype)

  return jax.jit(init, out_shardings=out_sharding)


def _new_param(kind: str, key, shape, dtype, names, like) -> LoRAParam:
  # Follow the base kernel onto its mesh (if it has one) by logical names, never via one device.
  placed = getattr(like, "sharding", None)
  out = None
  if isinstance(placed, NamedSharding):
    out = sharding.named_sharding(placed.mesh, names, shape)
  value = _initializer(kind, tuple(shape), jnp.dtype(dtype), out)(key)
  return LoRAParam(value, out_sharding=tuple(names), eager_sharding=False)


class LoRALinear(layers.Linear):
  """A `layers.Linear` plus a trainable low-rank update; kernel and bias are the base's own."""

  def __init__(self, base: layers.Linear, spec: LoRASpec, key: jax.Array):
    kernel = base.kernel.get_value()
    in_f, out_f = kernel.shape
    in_axis, out_axis = base.kernel.get_metadata().get("out_sharding") or (None, None)
    k_a, k_b = jax.random.split(key)
    self.kernel = base.kernel
    self.bias = base.bias
    self.compute_dtype = base.compute_dtype
    if hasattr(base, "quant_type"):  # a quantized frozen base (jaxtune.quantize): keep it so
      self.kernel_scale = base.kernel_scale
      self.quant_type = base.quant_type
    # Adapters in the base's float dtype (a quantized kernel's scales keep it; its codes are ints).
    r, dtype = spec.rank, layers.weight_dtype(base, "kernel")
    self.lora_a = _new_param(spec.init, k_a, (in_f, r), dtype, (in_axis, "lora_rank"), kernel)
    self.lora_b = _new_param("zeros", k_b, (r, out_f), dtype, ("lora_rank", out_axis), kernel)
    self.scale = spec.alpha / (math.sqrt(spec.rank) if spec.use_rslora else spec.rank)
    # A layers.Dropout, so model.train() / model.eval() switch it with the model's others.
    self.lora_dropout = layers.Dropout(spec.dropout)

  def __call__(self, x: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    y = super().__call__(x)
    drop = self.lora_dropout
    if not drop.deterministic and drop.rate > 0 and lora_rng is None:
      raise ValueError(
        f"lora.dropout={drop.rate} in training mode, but this layer got no lora_rng: the model "
        "must call its linear layers as proj(x, lora_rng=rng()) for LoRA dropout"
      )
    dtype = self.compute_dtype or x.dtype
    h = drop(x, lora_rng).astype(dtype)
    delta = jnp.dot(jnp.dot(h, self.lora_a[...].astype(dtype)), self.lora_b[...].astype(dtype))
    return y + (delta * self.scale).astype(y.dtype)

  def merged(self) -> layers.Linear:
    """A plain Linear with kernel + scale * lora_a @ lora_b (in float32, cast back)."""
    codes = self.kernel.get_value()
    kernel = layers.weight(self, "kernel")  # a quantized base: dequantized here
    axes = tuple(self.kernel.get_metadata().get("out_sharding") or (None, None))
    shell = nnx.eval_shape(lambda: layers.Linear(
      kernel.shape[0], kernel.shape[1], axes=axes, use_bias=self.bias is not None,
      param_dtype=kernel.dtype, compute_dtype=self.compute_dtype, rngs=nnx.Rngs(0),
    ))
    value = _fold(kernel, self.lora_a.get_value(), self.lora_b.get_value(), jnp.float32(self.scale))
    if isinstance(getattr(codes, "sharding", None), NamedSharding):
      value = jax.device_put(value, codes.sharding)
    # A float kernel keeps its own variable's metadata; quantized codes' variable is no Param.
    shell.kernel = (shell.kernel if hasattr(self, "kernel_scale") else self.kernel).replace(value)
    shell.bias = self.bias
    return shell


@jax.jit
def _fold(kernel, a, b, scale):
  delta = jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32))
  return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)


# ------------------------------------------------------------------------ model surgery


def _path(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def _replace(root: nnx.Module, path: tuple, module: nnx.Module) -> None:
  parent = root
  for p in path[:-1]:
    parent = parent[p] if isinstance(p, int) else getattr(parent, p)
  if isinstance(path[-1], int):
    parent[path[-1]] = module
  else:
    setattr(parent, path[-1], module)


def lora_modules(model: nnx.Module) -> list[tuple[str, LoRALinear]]:
  """('layers/0/self_attn/q_proj', module) for every LoRA layer, in model order."""
  return [(_path(p), m) for p, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]


def has_lora(model: nnx.Module) -> bool:
  return any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(model))


def apply(model: nnx.Module, cfg: Mapping | None, *, seed: int = 0) -> nnx.Module:
  """Replace every `layers.Linear` whose path matches `lora.targets` with a `LoRALinear`.

  Works in place (like PEFT's get_peft_model) and returns the model. With `lora.rank` 0 the
  model comes back unchanged. Adapter `i` (in model order) is initialised from
  fold_in(key(seed), i), so the same seed gives the same adapters. New LoRA layers start in
  eval mode (no dropout): call `model.train()` afterwards, as the driver does before splitting.
  """
  spec = resolve(cfg)
  if spec.rank == 0:
    return model
  if has_lora(model):
    raise ValueError("the model already has LoRA layers; apply LoRA once")
  targets = _compile("targets", spec.targets)
  linears = [(p, m) for p, m in nnx.iter_modules(model) if isinstance(m, layers.Linear)]
  chosen = [(p, m) for p, m in linears if targets.search(_path(p))]
  if not chosen:
    names = sorted({_path(p) for p, _ in linears})
    raise ConfigError(
      f"lora.targets={spec.targets!r} matches no linear layer of {type(model).__name__}; "
      f"its linear layers are e.g. {names[:8]}"
    )
  key = jax.random.key(seed)
  for i, (path, base) in enumerate(chosen):
    _replace(model, path, LoRALinear(base, spec, jax.random.fold_in(key, i)))
  model.lora_spec = spec
  return model


def merge(model: nnx.Module) -> nnx.Module:
  """A plain copy of `model` with every adapter folded into its kernel; `model` is untouched.

  The copy shares the (immutable) base arrays, so it costs one new kernel per adapted layer.
  A quantized base (model.quantize) comes back dequantized: adapted kernels are the dequantized
  codes plus the adapter, the other quantized weights the dequantized codes (float, the run's
  param dtype), so every export writes ordinary float weights.
  """
  graphdef, state = nnx.split(model)
  plain = nnx.merge(graphdef, state)  # new module objects over the same arrays
  for path, m in list(nnx.iter_modules(plain)):
    if isinstance(m, LoRALinear):
      _replace(plain, path, m.merged())
  if hasattr(plain, "lora_spec"):
    del plain.lora_spec
  return quantize.dequantize_model(plain)


# ------------------------------------------------------------------- trainable vs frozen


def trainable_filter(cfg: Mapping | None):
  """The nnx filter of trained params: LoRA on, the adapters and `lora.train_also` matches;
  LoRA off (rank 0), every `nnx.Param`."""
  spec = resolve(cfg)
  if spec.rank == 0:
    return nnx.Param
  also = _compile("train_also", spec.train_also)
  if also is None:
    return LoRAParam
  by_path = lambda path, _: bool(also.search(_path(path)))
  return nnx.Any(LoRAParam, nnx.All(nnx.Param, by_path))


def split_trainable(model: nnx.Module, cfg: Mapping | None):
  """(graphdef, trainable, frozen) nnx States; `combine` puts them back together.

  Only `trainable` is optimised and checkpointed; `frozen` (base weights and any other state)
  goes into the jitted step as a separate, non-donated argument.
  """
  spec = resolve(cfg)
  if spec.rank > 0 and not has_lora(model):
    raise ValueError(
      f"lora.rank={spec.rank} but the model has no LoRA layers: call lora.apply first"
    )
  return nnx.split(model, trainable_filter(cfg), ...)


def combine(graphdef: nnx.GraphDef, trainable, frozen) -> nnx.Module:
  """The model from `split_trainable`'s parts (nnx States or their pure dicts)."""
  return nnx.merge(graphdef, trainable, frozen)


# ---------------------------------------------------------------------------- PEFT export


def _host(value: jax.Array) -> np.ndarray:
  if not value.is_fully_addressable:
    # Multi-process: gather the full (small) tensor on every host, as convert.export_tensors does.
    from jax.experimental import multihost_utils

    value = multihost_utils.process_allgather(value, tiled=True)
  return np.asarray(jax.device_get(value))


def _peft_lora_weights(row, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
  """(lora_A.weight [r, in], lora_B.weight [out, r], HF stores the kernel [in, out]).

  PEFT's A and B are nn.Linear weights whatever the base layer (Conv1D included), so A is
  lora_a.T. B must follow the row's `to_hf`, which may transpose and permute the output axis
  (GPT-2's head-major c_attn); a probe checks that it acts on that axis alone.
  """
  r, out = b.shape
  n = out + 1  # a leading size unequal to `out`, so a transpose shows in the shape
  probe_shape = row.to_hf(np.zeros((n, out), np.float32)).shape
  if probe_shape not in ((out, n), (n, out)):
    raise ValueError(f"{row.hf}: cannot express this layer's export transform as a LoRA adapter")
  torch_layout = probe_shape == (out, n)  # nn.Linear [out, in]; else Conv1D [in, out]
  cols = (lambda m: row.to_hf(m).T) if torch_layout else row.to_hf  # [k, out] in HF's order
  probe = np.random.default_rng(0).standard_normal((n, r)).astype(np.float32)
  b32 = b.astype(np.float32)
  if not np.allclose(cols(probe @ b32), probe @ cols(b32), atol=1e-5):
    raise ValueError(f"{row.hf}: its export transform mixes in the input axis (not PEFT's layout)")
  return np.ascontiguousarray(a.T), np.ascontiguousarray(cols(b).T), not torch_layout


def _whole_modules(modules: set[str], rows) -> list[str]:
  """`modules` with every group that makes up a whole parent module named by the parent.

  A head of several linears (MPNet's `classifier.dense` and `classifier.out_proj`) is saved as
  the one module PEFT wraps for the task (`classifier`); PEFT adds that name for SEQ_CLS itself
  and would otherwise look for keys under both.
  """
  below = lambda a: {r.hf.rsplit(".", 1)[0] for r in rows if r.hf.startswith(a + ".")}
  out = set()
  for m in modules:
    parts = m.split(".")
    parents = (".".join(parts[:i]) for i in range(1, len(parts)))
    out.add(next((a for a in parents if below(a) <= modules), m))
  return sorted(out)


def save_adapter(model: nnx.Module, out_dir: str | os.PathLike, *,
                 base_model_name_or_path: str | None, dtype=None) -> Path:
  """Write a PEFT LoRA adapter directory: adapter_config.json + adapter_model.safetensors.

  Keys are PEFT's (`base_model.model.<HF module>.lora_A.weight` [r, in], `lora_B.weight`
  [out, r]), HF module names come from the family's Row table, and fully trained modules
  (`lora.train_also`, plus task heads a base checkpoint lacks) go under `modules_to_save`.
  `peft.PeftModel.from_pretrained(<base HF model>, out_dir)` then computes what `model` does.
  `base_model_name_or_path` is what `AutoPeftModel*.from_pretrained(out_dir)` loads: a hub id or
  an HF directory; None (written as null) when no such base exists (a GGUF file: load it with
  transformers' `gguf_file=` and attach the adapter with `PeftModel.from_pretrained`).
  """
  from jaxtune.hf.families import family_for_module
  from jaxtune.hf.safetensors_io import write_safetensors

  if base_model_name_or_path is not None and not base_model_name_or_path:
    raise ValueError("save_adapter needs base_model_name_or_path (the HF model the adapter is for)")
  adapters = lora_modules(model)
  if not adapters:
    raise ValueError("the model has no LoRA layers: nothing to write as an adapter")
  if getattr(model.config, "pooling", "cls") != "cls":
    # PEFT would load the adapter onto BertForSequenceClassification, which pools [CLS].
    raise ConfigError(
      f"model.pooling={model.config.pooling!r}: a PEFT adapter needs a transformers class that "
      "computes the model, and none pools that way; export merged (export.merge_lora=True), "
      "which writes a sentence-transformers directory")
  spec: LoRASpec = model.lora_spec
  family = family_for_module(model)
  rows = family.table(model.config, task=model.task)
  by_param = {r.param: r for r in rows}
  cast = (lambda x: x.astype(jnp.dtype(dtype))) if dtype is not None else (lambda x: x)

  def hf_module(param_path: str) -> str:
    row = by_param.get(param_path)
    if row is None or not row.hf.endswith((".weight", ".bias")):
      raise ValueError(f"{param_path}: no HF weight for it in the {family.name} table")
    return row.hf.rsplit(".", 1)[0]

  tensors: dict[str, np.ndarray] = {}
  targeted: list[str] = []
  layouts = set()
  for path, m in adapters:
    row = by_param.get(f"{path}/kernel")
    if row is None or not row.hf.endswith(".weight"):
      raise ValueError(f"LoRA layer {path}: its kernel has no '.weight' row in the HF table")
    module = row.hf.removesuffix(".weight")
    a, b = _host(m.lora_a.get_value()), _host(m.lora_b.get_value())
    a, b, fan_in_fan_out = _peft_lora_weights(row, a, b)
    tensors[f"base_model.model.{module}.lora_A.weight"] = cast(a)
    tensors[f"base_model.model.{module}.lora_B.weight"] = cast(b)
    targeted.append(module)
    layouts.add(fan_in_fan_out)

  # Fully trained modules: train_also params, and task heads a base checkpoint lacks (PEFT
  # would load those freshly initialised), whole modules as PEFT's ModulesToSaveWrapper saves.
  params = {_path(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  also = _compile("train_also", spec.train_also)
  trained = [p for p, v in params.items()
             if also and also.search(p) and not isinstance(v, LoRAParam)]
  heads = [r.param for r in rows if r.init_if_missing]
  to_save = _whole_modules({hf_module(p) for p in trained + heads}, rows)
  for module in to_save:
    inside = [t for t in targeted if t == module or t.startswith(module + ".")]
    if inside:
      raise ConfigError(
        f"{module} is both fully trained (lora.train_also or a task head) and holds LoRA layers "
        f"{inside[:3]}; PEFT cannot express that: narrow lora.targets or lora.train_also"
      )
    for row in rows:
      if row.hf.startswith(module + "."):
        value = _host(params[row.param].get_value())
        tensors[f"base_model.model.{row.hf}"] = cast(row.to_hf(value))

  # Short names (q_proj) when they pick exactly the adapted layers, else full module paths.
  linear_modules = [by_param[f"{_path(p)}/kernel"].hf.removesuffix(".weight")
                    for p, m in nnx.iter_modules(model)
                    if isinstance(m, layers.Linear) and f"{_path(p)}/kernel" in by_param]
  short = sorted({t.rsplit(".", 1)[-1] for t in targeted})
  exact = {m for m in linear_modules if m.rsplit(".", 1)[-1] in short} == set(targeted)
  adapter_config = {
    "peft_type": "LORA",
    "task_type": _PEFT_TASKS.get(model.task),
    "base_model_name_or_path": base_model_name_or_path and str(base_model_name_or_path),
    "r": spec.rank,
    "lora_alpha": spec.alpha,
    "lora_dropout": spec.dropout,
    "use_rslora": spec.use_rslora,
    "init_lora_weights": True if spec.init == "kaiming" else "gaussian",
    "target_modules": short if exact else sorted(targeted),
    "modules_to_save": to_save or None,
    "fan_in_fan_out": layouts == {True},  # HF Conv1D layers (GPT-2) store [in, out]
    "bias": "none",
    "inference_mode": True,
  }
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_safetensors(out / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
  text = json.dumps(adapter_config, indent=2, sort_keys=True) + "\n"
  (out / "adapter_config.json").write_text(text)
  return out
