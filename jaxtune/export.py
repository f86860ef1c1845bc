"""A run's model out of jaxtune: write it as an HF directory with a card, or as a GGUF file.

The run's model comes from `jaxtune.finished_run.load_run` (its best checkpoint, averaged
weights when the run kept them, LoRA adapters included); `save` writes it with `jaxtune.hf.save`
(merged weights, or a PEFT adapter directory) plus the tokenizer (truncating as the run did when
its objective reads a fixed length), generation_config.json when it generates (its stop tokens),
and a README.md model card (`jaxtune.card`). The train driver's `export.enabled` and `jaxtune
export` both go through `save`. `save_gguf` writes a causal LM (LoRA merged) as one llama.cpp GGUF file
instead (`jaxtune export --format=gguf`, `jaxtune.hf.gguf_write`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
from etils import epath
from flax import nnx

from jaxtune import card, objectives
from jaxtune.config import check_dtype
from jaxtune.errors import ConfigError, OutputError

# Loading a run lives in finished_run; these names stay reachable as export.load_run & co.
from jaxtune.finished_run import Run, choose_step, load_run, no_checkpoint_yet  # noqa: F401

log = logging.getLogger(__name__)


def output_folder(out, workdir=None, *, overwrite: bool = False, flag: str = "--out",
                  hint: str = ""):
  """The checked output folder of an export (`jaxtune.outputs`): refused when it holds files
  jaxtune did not write (unless `overwrite`) or when it would replace the run it reads."""
  from jaxtune import outputs

  inputs = []
  if workdir is not None:
    w = epath.Path(workdir)
    inputs = [w / "checkpoints", w / "config.json", w / "run.json", w / "results.json"]
  return outputs.Folder(out, command="jaxtune export", flag=flag, overwrite=overwrite,
                        inputs=inputs, expected=("config.json", "README.md"), hint=hint)


def save(model: nnx.Module, out: str | Path, tokenizer, config, *, workdir: str | Path | None = None,
         merge_lora: bool | None = None, dtype: str | None = None, overwrite: bool = False,
         flag: str = "--out", hint: str = "") -> epath.Path:
  """Write `model` as an HF directory (merged weights or, LoRA unmerged, a PEFT adapter).

  `merge_lora` and `dtype` default to the run's `export.merge_lora` and `export.dtype`.
  The card reads workdir/results.json and run.json when `workdir` is given. The files are
  written to a staging directory first (local; for a remote `out` such as gs:// too, since
  `hf.save` streams safetensors shards to local files), then moved or uploaded into `out`
  under the rule of `jaxtune.outputs` (`overwrite`, `flag` and `hint` as there).
  """
  from jaxtune import hf

  final = epath.Path(out)
  merge_lora = config.export.merge_lora if merge_lora is None else merge_lora
  check_dtype(config.export.dtype if dtype is None else dtype,
              "export.dtype" if dtype is None else "dtype")
  dtype = (config.export.dtype if dtype is None else dtype) or None
  adapter = config.lora.rank > 0 and not merge_lora
  model = _on_process_zero(model)  # every process joins the gather; only process 0 writes
  if model is not None:
    folder = output_folder(final, workdir, overwrite=overwrite, flag=flag, hint=hint)
    local = folder.staging()
    try:
      source = card.describe_source(config.model.source)
      objective = objectives.get(config)
      pad = getattr(model.config, "pad_token_id", None)
      if objective.head == "seq_cls" and tokenizer is not None and tokenizer.pad_token_id is None and pad is not None:
        # The pad a decoder classifier pools by (its EOS): transformers' pipeline pads batches with it.
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
      if adapter:
        hf.save(model, local, tokenizer, adapter_only=True, dtype=dtype,
                base_model_name_or_path=source.peft_base)
      else:
        hf.save(model, local, tokenizer, dtype=dtype,
                max_seq_length=config.data.seq_len if objective.fixed_length else None)
        if objective.generates:
          write_generation_config(local, tokenizer, model.config, config.model.source, source)
      if tokenizer is not None:
        fit_tokenizer_config(local, config)
      chat = isinstance(getattr(tokenizer, "chat_template", None), str)
      (local / "README.md").write_text(
        card.model_card(config, workdir, adapter=adapter, source=source, chat=chat))
      folder.publish(local)
    finally:
      shutil.rmtree(local, ignore_errors=True)
    log.info("exported the model to %s", final)
  return final


def _on_process_zero(model: nnx.Module) -> nnx.Module | None:
  """`model` with every array whole in process 0's host memory, or None on other processes.

  Multi-process: weights sharded over several hosts are gathered by all processes together
  (a collective that process 0 alone would wait in forever), one array at a time and in the
  same order everywhere; process 0 keeps them on its CPU device, so unstacking layers, folding
  LoRA adapters and writing run on process 0 alone, and the accelerators' memory is untouched.
  Every process must call this. One process: `model` itself.
  """
  if jax.process_count() == 1:
    return model
  from jax.experimental import multihost_utils

  main = jax.process_index() == 0
  host = jax.local_devices(backend="cpu")[0]
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  gathered = []
  for x in leaves:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # spans several processes
      x = multihost_utils.process_allgather(x, tiled=True)  # numpy, on every process
      x = jax.device_put(x, host) if main else None
    gathered.append(x)
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, gathered)) if main else None


# Keys transformers copies from a tokenizer.json's padding/truncation (MiniLM's pads and cuts at
# 128) and from load-time arguments into tokenizer_config.json: none says how the model was
# trained, and a stale max_length contradicts model_max_length.
_STALE_TOKENIZER_KEYS = ("max_length", "stride", "pad_to_multiple_of", "padding_strategy",
                         "is_local", "local_files_only")


def fit_tokenizer_config(out: Path, config) -> None:
  """Make out/tokenizer_config.json truncate as the run did.

  A classifier saw at most data.seq_len tokens, special tokens included, cut by
  `tokenizer(..., truncation=True, max_length=seq_len)` (longest first, on the tokenizer's
  truncation side): model_max_length = seq_len makes `truncation=True` in transformers (the
  pipeline's or the tokenizer's own) cut the same tokens.
  """
  path = Path(out) / "tokenizer_config.json"
  if not path.exists():
    return
  tc = json.loads(path.read_text())
  for key in _STALE_TOKENIZER_KEYS:
    tc.pop(key, None)
  if objectives.get(config).fixed_length:
    tc["model_max_length"] = int(config.data.seq_len)
    tc["truncation_strategy"] = "longest_first"
    tc.setdefault("truncation_side", "right")
  path.write_text(json.dumps(tc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_generation_config(out: Path, tokenizer, model_config, model_source: str,
                            source: card.Source) -> None:
  """out/generation_config.json: the base's own (when it has one) with every stop token."""
  from jaxtune.hf import generation

  base_dir = None
  if source.kind == "dir":
    base_dir = Path(model_source).expanduser()
  elif source.kind == "hub":
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.hub_id, "generation_config.json")
    base_dir = Path(cached).parent if isinstance(cached, str) else None
  cfg = generation.generation_config(tokenizer, model_config, generation.read_base(base_dir))
  (Path(out) / "generation_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def check_gguf(config, out: str, quant: str) -> Path:
  """Refuse, before the restore, what a GGUF export cannot do: a classifier or encoder run, an
  unknown quant, an --out that is not a new .gguf file (one is never overwritten)."""
  from jaxtune.hf import gguf_write

  if not objectives.get(config).generates:
    raise ConfigError(
      f"--format=gguf: this run trains a {config.model.task} model (model.task); GGUF export is "
      f"for causal language models ({', '.join(gguf_write.WRITTEN)}); export it with --format=hf")
  if quant not in gguf_write.QUANTS:
    raise ConfigError(f"--quant={quant!r}: expected one of {', '.join(gguf_write.QUANTS)}")
  if (config.data.tokenizer or config.model.source).startswith("preset:"):
    raise ConfigError(f"--format=gguf: the run has no tokenizer (model.source="
                      f"{config.model.source!r} with no data.tokenizer); a GGUF file must carry one")
  path = Path(out).expanduser()
  if "://" in str(out) or path.suffix != ".gguf":
    raise ConfigError(f"--out={out}: a GGUF export is one local file; give a path ending in .gguf")
  if path.exists() or path.is_symlink():
    raise OutputError(f"--out={out}: the file exists and jaxtune never overwrites it; choose "
                      f"another --out (e.g. {path.with_name(path.stem + '-2.gguf')}) or move it away")
  return path


def save_gguf(model: nnx.Module, out: str | Path, tokenizer, config, *, quant: str = "f16") -> Path:
  """Write `model` (LoRA merged) with `tokenizer` as the new GGUF file `out`.

  The file is written under a temporary name beside `out` and linked into place only when
  complete, so an interrupted export leaves no half file under the name, and a file that
  appeared at `out` meanwhile is left alone.
  """
  import os

  from jaxtune.hf import gguf_write

  path = check_gguf(config, str(out), quant)
  model = _on_process_zero(model)
  if model is None:
    return path
  source = card.describe_source(config.model.source)
  general = gguf_write.General(name=path.stem, base_model=source.name, base_repo=source.hub_id,
                               license=source.license)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
  try:
    gguf_write.write(model, partial, tokenizer, quant=quant, general=general)
    try:
      os.link(partial, path)  # fails, rather than replaces, if `path` appeared meanwhile
    except FileExistsError:
      raise OutputError(f"--out={out}: a file appeared there during the export; it was left "
                        "alone: choose another --out") from None
  finally:
    partial.unlink(missing_ok=True)
  log.info("exported the model to %s", path)
  return path
