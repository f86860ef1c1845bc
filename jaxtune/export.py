"""A run's model out of jaxtune: restore it from a workdir, write it as an HF directory with a card.

`load_run` rebuilds a finished (or interrupted) run's model from workdir/config.json and its
best checkpoint (averaged weights when the run kept them), LoRA adapters included;
`save` writes it with `jaxtune.hf.save` (merged weights, or a PEFT adapter directory) plus the
tokenizer and a README.md model card. The train driver's `export.enabled` and `jaxtune export`
both go through `save`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

import jax
import ml_collections
from etils import epath
from flax import nnx

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  model: nnx.Module  # eval mode, LoRA layers still separate
  tokenizer: object  # None when the run had none (synthetic data on a preset)
  step: int
  workdir: Path


def load_run(workdir: str | Path, *, step: int = -1, mesh=None) -> Run:
  """The model of `workdir` at checkpoint `step` (-1: the best, else the latest)."""
  from jaxtune import checkpoint, sharding, train
  from jaxtune import config as jt_config
  from jaxtune import data as data_lib
  from jaxtune import step as step_lib
  from jaxtune.models import layers

  workdir = Path(workdir)
  config = jt_config.read_run_config(workdir)
  if not (workdir / "checkpoints").is_dir():  # before building a model, or orbax making the folder
    raise no_checkpoint_yet(workdir)
  run_file = workdir / "run.json"
  run = json.loads(run_file.read_text()) if run_file.exists() else {}
  label_names = tuple(run.get("extra", {}).get("label_names") or ())
  mesh = mesh or sharding.make_mesh(**config.mesh)
  num_labels = config.model.num_labels or len(label_names) or None
  built = train.build_state(config, mesh, num_labels, 10**9, label_names)
  ckpt = checkpoint.Checkpointer(
    workdir / "checkpoints", save_every_steps=0, save_every_minutes=0, keep_last=10**6,
    keep_best=10**6, best_metric=config.checkpoint.best_metric, best_mode=config.checkpoint.best_mode,
  )
  chosen = choose_step(ckpt, step, workdir)
  params = train.eval_params(train.restore_step(ckpt, chosen, built))
  ckpt.close()
  model = step_lib.merge(built.eval_graphdef, params, built.frozen)
  model.eval()
  layers.unstack_layers(model)  # generation walks the layers one by one (KV cache)
  source = config.data.tokenizer or config.model.source
  tokenizer = None if source.startswith("preset:") else data_lib.load_tokenizer(source)
  return Run(config, model, tokenizer, int(chosen), workdir)


def no_checkpoint_yet(workdir: Path) -> Exception:
  from jaxtune import config as jt_config

  return jt_config.NotARunError(
    f"--workdir={workdir}: the run has no checkpoint yet ({Path(workdir) / 'checkpoints'} holds "
    "none); train it (or resume it) with `jaxtune train` first")


def choose_step(ckpt, step: int, workdir: Path) -> int:
  """`step` (-1: the best checkpoint, else the latest) when the run has it, else an error
  naming the steps it has (with `ckpt` closed)."""
  from jaxtune import config as jt_config

  steps = ckpt._valid_steps()
  if not steps or step >= 0 and step not in steps:
    ckpt.close()  # orbax's start-up threads must finish before the error ends the process
  if not steps:
    raise no_checkpoint_yet(workdir)
  if step < 0:
    return ckpt.best_step() or steps[-1]
  if step not in steps:
    raise jt_config.NotARunError(f"--step={step}: {ckpt.directory} has no checkpoint of that step; "
                                 f"it has {', '.join(map(str, steps))} (or leave --step out)")
  return step


def save(model: nnx.Module, out: str | Path, tokenizer, config, *, workdir: str | Path | None = None,
         merge_lora: bool | None = None, dtype: str | None = None) -> epath.Path:
  """Write `model` as an HF directory (merged weights or, LoRA unmerged, a PEFT adapter).

  `merge_lora` and `dtype` default to the run's `export.merge_lora` and `export.dtype`.
  The card reads workdir/results.json and run.json when `workdir` is given. A remote `out`
  (gs://) is written to a local staging directory first, then uploaded file by file:
  `hf.save` streams safetensors shards to local files.
  """
  from jaxtune import hf, writer

  final = epath.Path(out)
  merge_lora = config.export.merge_lora if merge_lora is None else merge_lora
  dtype = (config.export.dtype if dtype is None else dtype) or None
  adapter = config.lora.rank > 0 and not merge_lora
  if jax.process_index() == 0:
    staging = tempfile.mkdtemp(prefix="jaxtune_export_") if writer.is_remote(final) else None
    local = Path(staging) if staging else Path(final)
    if adapter:
      hf.save(model, local, tokenizer, adapter_only=True, dtype=dtype,
              base_model_name_or_path=config.model.source)
    else:
      hf.save(model, local, tokenizer, dtype=dtype)
    (local / "README.md").write_text(model_card(config, workdir, adapter=adapter))
    if staging:
      for f in sorted(Path(staging).rglob("*")):
        if f.is_file():
          dest = final / str(f.relative_to(staging))
          dest.parent.mkdir(parents=True, exist_ok=True)
          dest.write_bytes(f.read_bytes())
      shutil.rmtree(staging)
  log.info("exported the model to %s", final)
  return final


def model_card(config, workdir: str | Path | None, *, adapter: bool) -> str:
  """README.md: HF yaml header, base model, data, training config and final metrics."""
  import jaxtune

  workdir = epath.Path(workdir) if workdir else None
  results = _read_json(workdir / "results.json") if workdir else None
  run = (_read_json(workdir / "run.json") if workdir else None) or {}
  base = config.model.source
  on_hub = not base.startswith("preset:") and not Path(base).expanduser().exists()
  task = {"causal_lm": "text-generation", "seq_cls": "text-classification"}.get(config.model.task)
  header = ["---", f"library_name: {'peft' if adapter else 'transformers'}"]
  if on_hub and not base.endswith(".gguf"):
    header.append(f"base_model: {base}")
  if task:
    header.append(f"pipeline_tag: {task}")
  header += ["tags:", "- jaxtune", *(["- lora"] if config.lora.rank > 0 else []),
             *([f"- {task}"] if task else []), "---", ""]
  d = config.data
  data = d.source or d.kind
  stats = run.get("extra", {}).get("data_stats") or {}
  lines = [
    f"# {Path(str(workdir)).name if workdir else 'jaxtune model'}", "",
    f"Fine-tuned with jaxtune {jaxtune.__version__} "
    f"({config.model.task}{f', LoRA rank {config.lora.rank}' if config.lora.rank else ''}"
    f"{', adapter only' if adapter else ', weights merged' if config.lora.rank else ''}).", "",
    "## Base model", "", f"`{base}`", "",
    "## Data", "", f"- kind: `{d.kind}`", f"- source: `{data}`",
  ]
  if d.validation_source:
    lines.append(f"- validation: `{d.validation_source}`")
  for key in ("rows_read", "skipped", "truncated", "loss_tokens"):
    if key in stats:
      lines.append(f"- {key.replace('_', ' ')}: {stats[key]}")
  lines += ["", "## Final metrics", ""]
  if results:
    lines.append(f"Best checkpoint: step {results.get('best_step')}.")
    lines += ["", "| split | metric | value |", "|---|---|---|"]
    for split in ("val", "test"):
      for k, v in (results.get(split) or {}).items():
        if isinstance(v, int | float):
          lines.append(f"| {split} | {k} | {v:.6g} |")
  else:
    lines.append("No results.json (the run did not finish).")
  lines += ["", "## Training config", "", "```json",
            json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True), "```", ""]
  return "\n".join(header + lines)


def _read_json(path: epath.Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None
