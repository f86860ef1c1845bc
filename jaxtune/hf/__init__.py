"""Hugging Face checkpoints in and out: `load`, `save`, `load_tokenizer`.

`load` reads a local HF directory, a `.gguf` file, or a hub id (downloaded with huggingface_hub
when online); weights never pass through torch and remote code is never run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxtune.errors import ConfigError
from jaxtune.hf import convert
from jaxtune.hf.errors import CheckpointError, ModelNotFoundError, UnsupportedConfigError, read_json
from jaxtune.hf.families import family_for_model_type, family_for_module
from jaxtune.hf.safetensors_io import PickleSource, SafetensorsSource, write_sharded

__all__ = [
  "CheckpointError", "UnsupportedConfigError", "load", "load_tokenizer", "resolve", "save",
]
log = logging.getLogger(__name__)
TASKS = ("causal_lm", "seq_cls", "masked_lm", "encoder")  # masked_lm, encoder: BERT, MPNet


def resolve(source: str | os.PathLike, *, revision: str | None = None, allow_pickle=False) -> Path:
  """A local directory or .gguf file as it is; anything else is a hub id to download."""
  path = Path(source).expanduser()
  if path.exists():
    return path
  if str(source).endswith(".gguf") or os.sep in str(source) and not _looks_like_hub_id(source):
    raise ModelNotFoundError(f"{source}: no such file or directory; give an HF model directory, "
                             f"a .gguf file or a hub id (org/name){_asset_hint(path)}")
  from huggingface_hub import snapshot_download

  patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
  if allow_pickle:
    patterns.append("*.bin")
  try:
    return Path(snapshot_download(str(source), revision=revision, allow_patterns=patterns))
  except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: say which and why
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ModelNotFoundError(
      f"{source}: not a local path, and downloading it from the HF hub failed ({reason}); check "
      "the path or the hub id, and the network (HF_HUB_OFFLINE=1 allows only cached models)"
    ) from e


def _asset_hint(path: Path) -> str:
  from jaxtune.data import assets

  if path.absolute() == assets.mpnet_dir().absolute():
    return f"; all-mpnet-base-v2 is fetched on request: run `{assets.MPNET_FETCH}`"
  return ""


def _looks_like_hub_id(source) -> bool:
  parts = str(source).split("/")
  return len(parts) == 2 and all(parts)


def _source_for(path: Path, allow_pickle: bool):
  if list(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists():
    return SafetensorsSource.from_dir(path)
  bins = sorted(path.glob("pytorch_model*.bin"))
  if bins:
    if not allow_pickle:
      raise CheckpointError(
        f"{path}: only pickle checkpoints ({bins[0].name}) found; pickle can run arbitrary code "
        "when loaded, so pass allow_pickle=True if you trust this checkpoint"
      )
    return PickleSource(bins)
  raise CheckpointError(f"{path}: no *.safetensors weights found")


def load(
  source: str | os.PathLike,
  *,
  task: str = "causal_lm",
  num_labels: int | None = None,
  param_dtype: str = "float32",
  compute_dtype: str | None = None,
  mesh: Mesh | None = None,
  allow_pickle: bool = False,
  revision: str | None = None,
  config_overrides: dict | None = None,
  seed: int = 0,
  pooling: str = "cls",
  restoring: bool = False,
  quantize: str = "",
  keep_float: str = "",
) -> nnx.Module:
  """Load an HF checkpoint into a jaxtune model placed on `mesh` (one device if None).

  `quantize` ('int8' | 'nf4'): linear and embedding weights not matching the regex `keep_float`
  are stored quantized as they are read (jaxtune.quantize; the frozen base of a LoRA run).

  `config_overrides` replaces HF config attributes before conversion (e.g. dropout rates from
  a run config). A classification head absent from the checkpoint is initialised (logged as a
  warning, unless `restoring`: the caller replaces the weights from a run's checkpoint next).
  `pooling` ('cls' or 'mean', BERT and MPNet seq_cls only) is what the classifier reads; a
  sentence-transformers classifier (hf.sbert) is read with the pooling it was trained with.
  """
  if task not in TASKS:
    raise ConfigError(f"task={task!r}: expected one of {TASKS}")
  path = resolve(source, revision=revision, allow_pickle=allow_pickle)
  if path.suffix == ".gguf":
    from jaxtune.hf import gguf

    hf_config, tensors = gguf.open_gguf(path)
    where = str(path)
  else:
    cfg_file = path / "config.json"
    hf_config = read_json(cfg_file, missing="not found; an HF model directory has one")
    tensors = _source_for(path, allow_pickle)
    where = str(cfg_file)
  hf_config.update(config_overrides or {})
  family = family_for_model_type(hf_config.get("model_type"), where)
  cfg = family.config_from_hf(hf_config, task=task, num_labels=num_labels, where=where)
  if path.suffix != ".gguf":
    tensors = _with_sbert_head(path, tensors, task=task, pooling=pooling,
                               num_labels=getattr(cfg, "num_labels", 0))
  cfg = convert.with_pooling(family, cfg, task=task, pooling=pooling, where=where)
  model = convert.load_into(
    family, cfg, task=task, source=tensors, param_dtype=jnp.dtype(param_dtype),
    compute_dtype=jnp.dtype(compute_dtype) if compute_dtype else None, mesh=mesh,
    where=where, seed=seed, restoring=restoring, quantize=quantize, keep_float=keep_float,
  )
  if path.suffix == ".gguf":
    # The weights are read: drop the file's parsed metadata, which a 262k-token vocabulary
    # makes ~700 MB of small arrays (a run loads its tokenizer first; a later
    # load_tokenizer parses again).
    del tensors
    gguf.forget_readers()
    convert.release_freed_memory()
  return model


def _with_sbert_head(path: Path, tensors, *, task: str, pooling: str, num_labels: int):
  """`tensors` plus a sentence-transformers classifier's head, which must be read with the
  pooling it was trained with (a Dense head on mean embeddings is wrong on the [CLS] pooler)."""
  from jaxtune.hf import sbert

  if task != "seq_cls":  # only a classifier has a head to read; the encoder loads as a base model
    return tensors
  pipeline = sbert.read(path, num_labels)
  if pipeline is None or pipeline.head is None:
    return tensors
  if pipeline.pooling != "mean":
    raise UnsupportedConfigError(
      f"{pipeline.pooling_file}: a classifier head on {pipeline.pooling!r} pooling; jaxtune "
      "implements sentence-transformers classifiers on mean pooling only")
  if pipeline.pooling != pooling:
    raise CheckpointError(
      f"{pipeline.pooling_file}: this sentence-transformers classifier pools {pipeline.pooling!r}"
      f" but pooling={pooling!r} was asked for (model.pooling); load it with "
      f"pooling={pipeline.pooling!r}")
  return sbert.Merged(tensors, pipeline.head)


def save(model: nnx.Module, out_dir: str | os.PathLike, tokenizer=None, *, dtype=None,
         max_shard_bytes: int | None = None, adapter_only: bool = False,
         base_model_name_or_path: str | None = "", max_seq_length: int | None = None) -> Path:
  """Write an HF directory (config.json, safetensors sharded past 5 GB, tokenizer if given).

  A BERT or MPNet classifier on mean pooling is written as a sentence-transformers directory (hf.sbert)
  that truncates to `max_seq_length` tokens (default: the model's positions; pass the length
  the model was trained on, so sentence-transformers cuts texts where jaxtune did).

  A model with LoRA layers is written merged (standard HF weights); with `adapter_only=True`
  it is written as a PEFT adapter directory for `base_model_name_or_path` instead.
  """
  # LoRA (jaxtune.lora): fold the adapters into the kernels, or write only the adapters.
  from jaxtune import lora
  from jaxtune.models import layers

  if dtype is not None and not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise ConfigError(f"dtype={dtype!r}: weights are written as floats (float32, bfloat16, "
                      "float16); casting them to integers would make them zeros")
  layers.unstack_layers(model)  # scanned layers (model.scan_layers) back to the HF layout, in place
  if adapter_only:
    out = lora.save_adapter(model, out_dir, base_model_name_or_path=base_model_name_or_path,
                            dtype=dtype)
    if tokenizer is not None:
      tokenizer.save_pretrained(str(out))
    return out
  if lora.has_lora(model):
    model = lora.merge(model)
  family = family_for_module(model)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  hf_config = family.config_to_hf(model.config, task=model.task)
  tensors = convert.export_tensors(family, model, dtype=dtype)
  kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
  if getattr(model.config, "pooling", "cls") == "mean":
    from jaxtune.hf import sbert

    cfg = model.config
    sbert.write(out, tensors, prefix=family.base_prefix, hidden_size=cfg.hidden_size,
                num_labels=cfg.num_labels,
                max_seq_length=max_seq_length or cfg.max_position_embeddings, **kwargs)
  else:
    write_sharded(out, tensors, **kwargs)
  (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out))
  return out


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt",
                    "spiece.model", "vocab.json")


def load_tokenizer(source: str | os.PathLike, *, revision: str | None = None):
  """An HF fast tokenizer from an HF directory, hub id, or a .gguf file's metadata."""
  from jaxtune.data import templates

  path = resolve(source, revision=revision)
  if path.suffix == ".gguf":
    from jaxtune.hf import gguf_tokenizer

    tok = gguf_tokenizer.load_tokenizer(path)
    templates.set_template_origin(tok, f"{path} (tokenizer.chat_template)")
    return tok
  if path.is_dir() and not any((path / f).exists() for f in _TOKENIZER_FILES):
    raise CheckpointError(f"{source}: no tokenizer in this directory (none of "
                          f"{', '.join(_TOKENIZER_FILES)}); pass a tokenizer source that has one")
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, use_fast=True)
  templates.set_template_origin(tok, templates.template_origin(tok))  # the file in `path`
  return tok
