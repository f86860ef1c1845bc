"""Loading a finished (or interrupted) run: config, label names, best step, weights, tokenizer.

The one place a run is read back, by `jaxtune export`, `generate`, `eval`, `predict` and the
driver's own end-of-run evaluation and export. A run is its workdir: config.json (over today's
defaults, `config.read_run_config`), run.json (the data's label order), and checkpoints/ (the
best step by checkpoint.best_metric, else the latest; averaged weights when the run kept them),
restored into the shapes and shardings `jaxtune.build.build_state` gives the config, LoRA
adapters included. The checkpoint tree layout (`ckpt_tree`) is shared with the driver's saves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_collections
from etils import epath
from flax import nnx

from jaxtune import averaging, build, checkpoint, sharding
from jaxtune import config as jt_config
from jaxtune.errors import ConfigError
from jaxtune.objectives.base import merge


def ckpt_tree(state: dict) -> dict:
  # orbax stores no None leaves: drop absent weight averages.
  return {k: v for k, v in state.items() if v is not None}


def from_ckpt_tree(tree: dict, like: dict) -> dict:
  return {k: tree.get(k) if like[k] is not None else None for k in like}


def restore_step(ckpt: checkpoint.Checkpointer, s: int, built: build.Built) -> dict:
  """The train state saved at step `s`, in `built`'s shapes and shardings."""
  tree, _ = ckpt.restore(s, ckpt_tree(built.abstract()))
  return from_ckpt_tree(tree, built.state)


def eval_params(state: dict) -> dict:
  """The weights to evaluate and export: the averaged ones when averaging is on."""
  return averaging.params_for_eval(state.get("avg"), state["params"])


def no_checkpoint_yet(workdir: Path) -> Exception:
  return jt_config.NotARunError(
    f"--workdir={workdir}: the run has no checkpoint yet ({epath.Path(workdir) / 'checkpoints'} holds "
    "none); train it (or resume it) with `jaxtune train` first")


def require_checkpoints(workdir) -> None:
  """Refuse a run without checkpoints/ before a model is built (or orbax makes the folder)."""
  if not (epath.Path(workdir) / "checkpoints").is_dir():  # local, or gs:// and the like
    raise no_checkpoint_yet(workdir)


def choose_step(ckpt, step: int, workdir: Path) -> int:
  """`step` (-1: the best checkpoint, else the latest) when the run has it, else an error
  naming the steps it has (with `ckpt` closed)."""
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


def label_names(workdir) -> tuple[str, ...]:
  """The data's label order as the run recorded it in run.json (() when it has none)."""
  run_file = epath.Path(workdir) / "run.json"
  run = json.loads(run_file.read_text()) if run_file.exists() else {}
  return tuple(run.get("extra", {}).get("label_names") or ())


@dataclasses.dataclass
class Restored:
  """A run's chosen weights, as the driver holds them: split, on the mesh, LoRA separate."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  step: int
  mesh: object
  built: build.Built
  params: dict  # the evaluated weights (averaged ones when the run kept them)
  label_names: tuple[str, ...] = ()
  num_labels: int | None = None

  def model(self) -> nnx.Module:
    """The merged model in eval mode, layers unstacked (generation walks them one by one)."""
    from jaxtune.models import layers

    model = merge(self.built.eval_graphdef, self.params, self.built.frozen)
    model.eval()
    layers.unstack_layers(model)
    return model


def restore(workdir, config: ml_collections.ConfigDict, *, step: int = -1, mesh=None,
            num_labels: int | None = None, label_names: tuple[str, ...] = ()) -> Restored:
  """The weights of `workdir` at checkpoint `step` (-1: the best, else the latest), built as
  `config` builds its model (`num_labels`, `label_names`: the classes of its head)."""
  workdir = epath.Path(workdir)
  require_checkpoints(workdir)
  mesh = mesh or sharding.make_mesh(**config.mesh)
  built = build.build_state(config, mesh, num_labels, 10**9, label_names, restoring=True)
  ckpt = checkpoint.Checkpointer(
    workdir / "checkpoints", save_every_steps=0, save_every_minutes=0, keep_last=10**6,
    keep_best=10**6, best_metric=config.checkpoint.best_metric, best_mode=config.checkpoint.best_mode,
  )
  chosen = choose_step(ckpt, step, workdir)
  params = eval_params(restore_step(ckpt, chosen, built))
  ckpt.close()
  return Restored(config, workdir, int(chosen), mesh, built, params, tuple(label_names), num_labels)


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  model: nnx.Module  # eval mode, LoRA layers still separate
  tokenizer: object  # None when the run had none (synthetic data on a preset)
  step: int
  workdir: Path


def load_run(workdir: str | Path, *, step: int = -1, mesh=None) -> Run:
  """The model of `workdir` at checkpoint `step` (-1: the best, else the latest), with its
  tokenizer: what `jaxtune export` writes and `jaxtune generate --workdir` generates with."""
  from jaxtune import data

  workdir = Path(workdir)
  config = jt_config.read_run_config(workdir)
  require_checkpoints(workdir)
  names = label_names(workdir)
  restored = restore(workdir, config, step=step, mesh=mesh,
                     num_labels=config.model.num_labels or len(names) or None, label_names=names)
  source = config.data.tokenizer or config.model.source
  tokenizer = None if source.startswith("preset:") else data.load_tokenizer(source)
  return Run(config, restored.model(), tokenizer, restored.step, workdir)


def load_source(*, workdir: str | None = None, model: str | None = None, tokenizer: str = "",
                dtype: str = "float32", step: int = -1):
  """(model in eval mode, tokenizer) to generate with, from --workdir (a run, LoRA layers
  kept) or --model (`jaxtune generate`, back-translation, benchmarks). Here, not in generate.py:
  the generator is also the GRPO objective's, which the driver's build imports."""
  from jaxtune import hf

  if bool(workdir) == bool(model):
    raise ConfigError("pass exactly one of --workdir (a `jaxtune train` run) and --model (an HF "
                      f"directory, hub id, .gguf file or preset:NAME); got {'both' if workdir else 'neither'}")
  if workdir:
    run = load_run(workdir, step=step)
    # LoRA layers stay unmerged: decoding pays a rank-r matmul per adapted projection, and an
    # export (which merges) checked against this output tests the merge independently.
    m, tok = run.model, run.tokenizer
    if tokenizer:
      tok = hf.load_tokenizer(tokenizer)
    if tok is None:
      raise ConfigError(f"--workdir={workdir}: the run has no tokenizer; pass --tokenizer")
    return m, tok
  if not tokenizer and model.startswith("preset:"):
    raise ConfigError(f"--model={model}: a preset has no tokenizer; pass --tokenizer")
  if model.startswith("preset:"):
    from jaxtune.models import presets

    m = presets.init(model.removeprefix("preset:"), task="causal_lm", param_dtype=dtype)
  else:
    m = hf.load(model, task="causal_lm", param_dtype=dtype)
  return m, hf.load_tokenizer(tokenizer or model)
