"""Strict, table-driven conversion between HF checkpoints and jaxtune parameters.

Each family module gives a `Family`: how to read and write its HF config, how to build the
model, and a table of `Row`s, one per HF tensor, naming the jaxtune parameter it fills and the
transform between the two layouts. The loader here consumes every HF tensor, fills every
parameter, checks every shape, and places each tensor straight into its target sharding one at
a time; the exporter walks the same table backwards.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtune import sharding
from jaxtune.hf.errors import CheckpointError, UnsupportedConfigError
from jaxtune.hf.safetensors_io import TensorSource

log = logging.getLogger(__name__)


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def transpose(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)


@dataclasses.dataclass(frozen=True)
class Row:
  """One HF tensor <-> one jaxtune parameter."""

  hf: str
  param: str  # '/'-joined nnx path, e.g. 'layers/0/self_attn/q_proj/kernel'
  to_jax: Callable[[np.ndarray], np.ndarray] = _identity
  to_hf: Callable[[np.ndarray], np.ndarray] = _identity
  # A task head that a base checkpoint lacks: initialised N(0, init_std) (bias: zeros), logged.
  init_if_missing: bool = False
  init_std: float = 0.02


class Family:
  """What the generic loader needs to know about one model family."""

  name: str = ""
  model_types: tuple[str, ...] = ()
  # HF tensors that are buffers, not weights (rotary inv_freq, position_ids, ...).
  ignored: tuple[str, ...] = ()
  # What a classifier may read (model.pooling); 'mean' is exported through hf.sbert.
  poolings: tuple[str, ...] = ("cls",)
  # The head models' prefix of the base model's keys (`bert.`), which hf.sbert strips.
  base_prefix: str = ""

  def config_from_hf(self, hf: dict, *, task: str, num_labels: int | None, where: str):
    raise NotImplementedError

  def config_to_hf(self, cfg, *, task: str) -> dict:
    raise NotImplementedError

  def build(self, cfg, *, task: str, param_dtype, compute_dtype, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def table(self, cfg, *, task: str) -> list[Row]:
    raise NotImplementedError

  def normalize_key(self, key: str, *, task: str) -> str | None:
    """Map a checkpoint key onto the table's names; None drops it (e.g. an LM head for seq_cls)."""
    return key

  def unused(self, cfg, *, task: str) -> tuple[str, ...]:
    """Regexes of checkpoint keys this model config does not use (dropped, logged)."""
    return ()

  def tied_keys(self, cfg, *, task: str) -> dict[str, str]:
    """{duplicate: tensor it is tied to}, both as normalized names, as HF's `_tied_weights_keys`.

    A checkpoint may store both sides of a tied pair (a tied LM head saved as `lm_head.weight`
    too; torch `.bin` files always do); `load_into` then applies transformers' rule.
    """
    return {}


class ConfigReader:
  """`get(name)`: an HF config attribute, else the HF class default; `used` names what was read.

  `aliases` maps a name to the generic one some tools write instead (GPT-2's attribute_map).
  Pass `used` to `check_config_keys`, so an attribute nobody read is refused by name.
  """

  def __init__(self, hf: dict, defaults: dict, aliases: dict[str, str] | None = None):
    self.hf, self.defaults, self.aliases = hf, defaults, aliases or {}
    self.used: set[str] = set()

  def __call__(self, name: str):
    for key in (name, self.aliases.get(name)):
      if key is not None and key in self.hf:
        self.used.add(key)
        return self.hf[key]
    return self.defaults[name]


def label_names(hf: dict, *, task: str, num_labels: int | None, where: str) -> tuple[str, ...]:
  """The classifier's label names (() unless task is 'seq_cls'); their count is num_labels.

  `num_labels` from the caller wins, else the config's id2label, else its num_labels (as HF's
  PretrainedConfig reads them); names come from id2label when the counts agree, else LABEL_i.
  """
  if task != "seq_cls":
    return ()
  id2label = hf.get("id2label") or {}
  names = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
  if num_labels is None:
    num_labels = len(names) or hf.get("num_labels")
    if not num_labels:
      raise UnsupportedConfigError(
        f"{where}: task seq_cls needs num_labels: pass it, or use a config with id2label or "
        "num_labels"
      )
  if num_labels < 1:
    raise ValueError(f"num_labels={num_labels}: must be at least 1")
  return names if len(names) == num_labels else tuple(f"LABEL_{i}" for i in range(num_labels))


def label_config(names: tuple[str, ...]) -> dict:
  """The id2label / label2id attributes an HF config.json carries for these label names."""
  return {"id2label": {str(i): n for i, n in enumerate(names)},
          "label2id": {n: i for i, n in enumerate(names)}}


def check_config_keys(hf: dict, *, used: set[str], harmless: set[str], where: str) -> None:
  """Refuse config attributes we neither implement nor know to be harmless."""
  unknown = sorted(set(hf) - used - harmless - GENERIC_HARMLESS)
  if unknown:
    raise UnsupportedConfigError(
      f"{where}: unsupported config attribute(s) {unknown}; jaxtune does not implement them "
      "and will not silently ignore them"
    )


# Attributes of transformers' PretrainedConfig that never change the computation.
GENERIC_HARMLESS = {
  "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
  "id2label", "label2id", "num_labels", "problem_type", "bos_token_id", "eos_token_id",
  "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache", "return_dict",
  "output_hidden_states", "output_attentions", "torchscript", "tie_encoder_decoder",
  "is_encoder_decoder", "is_decoder", "add_cross_attention", "chunk_size_feed_forward",
  "pruned_heads", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
  "cross_attention_hidden_size", "tf_legacy_loss", "use_bfloat16", "_attn_implementation",
  "_attn_implementation_autoset", "attn_implementation", "gradient_checkpointing",
  "quantization_config_absent", "initializer_range", "max_position_embeddings",
  "classifier_dropout", "output_scores", "return_dict_in_generate", "keys_to_ignore_at_inference",
  "_commit_hash", "transformers.js_config", "base_model_tp_plan", "base_model_pp_plan",
}


def param_paths(state) -> dict[str, nnx.Variable]:
  """Flat {'a/b/0/kernel': Variable} view of an nnx State."""
  return {"/".join(str(p) for p in path): v for path, v in nnx.to_flat_state(state)}


def _place(arr: np.ndarray, target, mesh: Mesh | None) -> jax.Array:
  if mesh is None:
    return jax.device_put(arr)
  shard = sharding.variable_sharding(target, mesh)
  # Each device (or host, across processes) takes only its own slice of the host tensor.
  return jax.make_array_from_callback(arr.shape, shard, lambda idx: arr[idx])


def with_pooling(family: Family, cfg, *, task: str, pooling: str, where: str):
  """`cfg` with the classifier's pooling: 'cls' (every family's own) or 'mean' (BERT and MPNet
  seq_cls)."""
  if pooling == "cls":
    return cfg
  if not (pooling in family.poolings and task == "seq_cls"):
    raise UnsupportedConfigError(
      f"{where}: pooling={pooling!r} is implemented for BERT and MPNet sequence classification; "
      f"this is a {family.name} model for task {task!r} (model.pooling)")
  return dataclasses.replace(cfg, pooling=pooling)


def load_into(
  family: Family,
  cfg,
  *,
  task: str,
  source: TensorSource,
  param_dtype,
  compute_dtype,
  mesh: Mesh | None,
  where: str,
  seed: int = 0,
  restoring: bool = False,
  quantize: str = "",
  keep_float: str = "",
) -> nnx.Module:
  """Build `family`'s model abstractly, then fill it tensor by tensor from `source`.

  `quantize` ('int8' | 'nf4', jaxtune.quantize): each linear and embedding weight (except those
  matching the regex `keep_float`) is quantized as soon as it is placed, so the model never
  exists whole in full precision.

  Tensors the checkpoint lacks that may be initialised (a classifier head) are, with one
  warning, unless `restoring`: a run's checkpoint replaces every weight next (`jaxtune eval`,
  export, predict, a resumed run), so a fresh head is no news there (DEBUG)."""
  abstract = nnx.eval_shape(
    lambda: family.build(
      cfg, task=task, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=nnx.Rngs(seed)
    )
  )
  planned = {}
  if quantize:
    from jaxtune import quantize as quant

    planned = quant.plan(abstract, keep_float)
  encoded = {}
  graphdef, state = nnx.split(abstract)
  params = param_paths(state)
  rows = family.table(cfg, task=task)
  by_param = {r.param: r for r in rows}
  for path in params:
    if path not in by_param:
      raise CheckpointError(f"{family.name}: parameter {path!r} has no row in the HF key map")

  available: dict[str, str] = {}
  unused = family.unused(cfg, task=task)
  for key in sorted(source.names()):
    if any(re.fullmatch(p, key) for p in family.ignored):
      continue
    name = family.normalize_key(key, task=task)
    if name is None or any(re.fullmatch(p, key) for p in unused):
      log.info("%s: not used for task %s: %s", where, task, key)
      continue
    if name in available:
      raise CheckpointError(f"{where}: tensors {available[name]!r} and {key!r} both map to {name!r}")
    available[name] = key
  _resolve_tied(available, family.tied_keys(cfg, task=task), source, where)
  expected = {r.hf for r in rows}
  unexpected = sorted(set(available) - expected)
  if unexpected:
    files = sorted({source.file_of(available[k]) for k in unexpected})
    raise CheckpointError(
      f"{where}: unexpected tensor(s) in {', '.join(files)}: {unexpected[:10]}"
      f"{' ...' if len(unexpected) > 10 else ''} (not part of a {family.name} model with this config)"
    )
  missing = [r for r in rows if r.hf not in available]
  hard_missing = [r.hf for r in missing if not r.init_if_missing]
  if hard_missing:
    raise CheckpointError(
      f"{where}: missing tensor(s) {hard_missing[:10]}{' ...' if len(hard_missing) > 10 else ''}"
    )

  key = jax.random.key(seed)
  fresh = [r.hf for r in rows if r.hf not in available]
  if fresh:
    log.log(logging.DEBUG if restoring else logging.WARNING,
            "%s: %s absent from the checkpoint; initialised fresh%s", where, ", ".join(fresh),
            "" if restoring else " (training learns them)")
  for i, row in enumerate(rows):
    target = params[row.param]
    abstract_value = target.get_value()
    want = tuple(abstract_value.shape)
    if row.hf in available:
      src = available[row.hf]
      raw = source.get(src)
      if not np.issubdtype(raw.dtype, np.floating) and raw.dtype.kind != "V":
        raise CheckpointError(
          f"{source.file_of(src)}: tensor {src!r} has dtype {raw.dtype}, expected floating point"
        )
      arr = row.to_jax(np.asarray(raw))
      if tuple(arr.shape) != want:
        raise CheckpointError(
          f"{source.file_of(src)}: tensor {src!r} has shape {tuple(raw.shape)}, expected "
          f"{tuple(row.to_hf(np.zeros(want, np.float32)).shape)} for {family.name} parameter "
          f"{row.param!r}"
        )
    else:
      if len(want) == 1:
        arr = np.zeros(want, np.float32)
      else:
        arr = np.asarray(row.init_std * jax.random.normal(jax.random.fold_in(key, i), want))
    # copy=False: a float32 tensor for a float32 parameter is not copied again (Gemma 3's
    # table is 640 MiB); the host copies are dropped before the next tensor is read.
    value = _place(arr.astype(abstract_value.dtype, copy=False), target, mesh)
    raw = arr = None
    if row.param in planned:  # the float copy is dropped here, before the next tensor
      names = target.get_metadata().get("out_sharding")
      encoded[row.param] = quant.encode(value, quantize, planned[row.param][2], names)
      # Waited for: dispatch is asynchronous, and on a busy host the loop read tensors faster
      # than XLA encoded them, so float copies of many layers were alive at once.
      value = jax.block_until_ready(encoded[row.param])[0]
    target.set_value(value)
  model = nnx.merge(graphdef, state)
  model = quant.install_all(model, encoded, planned, quantize) if planned else model
  release_freed_memory()
  return model


def release_freed_memory() -> None:
  """Hand the C heap's free pages back to the OS (glibc's `malloc_trim`; elsewhere a no-op).

  Reading a checkpoint frees far more than it keeps: float tensors one at a time, and with
  `quantize` their float copies, plus the compiler's scratch for each new shape. glibc keeps
  freed small blocks in its arenas, so a process's RSS after loading Gemma 3 270M as nf4 stayed
  ~1.3 GB above its live arrays for the whole run; trimming returns it (the remedy Dask's docs
  give for "unmanaged memory")."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
    pass


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
  """Exact equality (torch.equal, as transformers checks), a block of rows at a time."""
  if a.shape != b.shape or a.dtype != b.dtype:
    return False
  if a.ndim == 0:
    return bool(np.array_equal(a, b))
  rows = max(1, (1 << 24) // max(1, a[0].size))  # ~16M elements per comparison
  return all(np.array_equal(a[i : i + rows], b[i : i + rows]) for i in range(0, len(a), rows))


def _resolve_tied(available: dict[str, str], tied: dict[str, str], source: TensorSource,
                  where: str) -> None:
  """Apply transformers' rule to tied pairs in `available` ({normalized name: source key}).

  Both stored and equal: the duplicate is dropped. Only the duplicate stored: it fills the
  tensor it is tied to. Both stored but different: transformers unties them and uses both, a
  network a tied config does not describe, so this refuses rather than drop one.
  """
  for dup, canon in tied.items():
    if dup not in available:
      continue
    dup_key = available.pop(dup)
    if canon not in available:
      available[canon] = dup_key
      continue
    canon_key = available[canon]
    if not _same_tensor(np.asarray(source.get(dup_key)), np.asarray(source.get(canon_key))):
      raise CheckpointError(
        f"{where}: tensors {dup_key!r} ({source.file_of(dup_key)}) and {canon_key!r} "
        f"({source.file_of(canon_key)}) are tied by the config but differ; transformers would "
        "untie them and use both. For an untied head, load with "
        "config_overrides={'tie_word_embeddings': False} (where the family supports it)"
      )


def export_tensors(family: Family, model: nnx.Module, *, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, host array) for every row, in table order; one parameter on the host at a time."""
  params = param_paths(nnx.state(model, nnx.Param))
  for row in family.table(model.config, task=model.task):
    value = params[row.param].get_value()
    if not value.is_fully_addressable:
      # Multi-process: gather the full tensor on every host (fine for export-sized models).
      from jax.experimental import multihost_utils

      value = multihost_utils.process_allgather(value, tiled=True)
    arr = np.asarray(jax.device_get(value))
    if dtype is not None:
      arr = arr.astype(jnp.dtype(dtype))
    yield row.hf, row.to_hf(arr)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def require(cond: bool, where: str, attr: str, value, why: str) -> None:
  """Raise UnsupportedConfigError naming the attribute when `cond` is false."""
  if not cond:
    raise UnsupportedConfigError(f"{where}: config attribute {attr}={value!r} is not supported: {why}")
