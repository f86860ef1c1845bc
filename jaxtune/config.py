"""The run configuration: every section with a real default, and checks that name the key.

Recipes in configs/ start from `default()` and change what they need. Every field has a typed
default (absl cannot override a field whose default is None), and the dict is locked so an
unknown key is an error.
"""

from __future__ import annotations

import ml_collections

from jaxtune import lora, optim
from jaxtune.data import config as data_config
from jaxtune.errors import ConfigError, WorkdirError
from jaxtune.models import bert

TASKS = ("causal_lm", "seq_cls")


def default() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  # An HF directory, .gguf file or hub id; or 'preset:<name>' for random weights (models.presets).
  c.model.source = "preset:tiny-llama"
  c.model.task = "causal_lm"
  c.model.num_labels = 0  # 0: from the data / checkpoint
  # What a BERT classifier reads: cls (the tanh pooler on [CLS], as BertForSequenceClassification)
  # | mean (the mean of the tokens, as sentence-transformers encoders were trained; exported as a
  # sentence-transformers directory).
  c.model.pooling = "cls"
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "bfloat16"
  c.model.remat = "none"  # none | full | dots
  # Layer weights stacked on a leading axis and run by one lax.scan: the layer compiles once and
  # the optimizer updates one array per weight. Needs identical layers (LoRA on all or none);
  # no layer-wise lr decay or gradual unfreezing. Exports and generation unstack.
  c.model.scan_layers = False
  # auto (cuDNN flash attention on GPU when it applies, else XLA) | xla | cudnn
  c.model.attention = "auto"
  c.model.allow_pickle = False
  # HF config attributes to override, as "name=value,name=value" (e.g. dropout rates).
  c.model.config_overrides = ""

  c.data = data_config.default_data_config()

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100
  c.train.epochs = 0.0  # > 0 overrides steps: epochs over the training split
  c.train.batch_size = 16  # global, across all devices and hosts
  c.train.micro_batches = 1  # gradient accumulation: batch_size / micro_batches per pass
  # > 0: batches of similar-length rows, each trimmed to the smallest of this many lengths up to
  # data.seq_len (one compilation per length); 0: every batch as wide as the longest row.
  c.train.length_buckets = 0
  c.train.log_every = 10
  c.train.eval_every = 50  # 0: only at the end
  c.train.eval_batch_size = 32
  c.train.eval_at_start = False  # also evaluate the starting weights (a baseline in metrics.jsonl)
  c.train.on_nonfinite = "stop"  # stop | skip
  # on_nonfinite='skip': the run fails (NonFiniteError) once more than this share of its steps
  # were skipped; a run that skips that often is not training.
  c.train.max_skipped_fraction = 0.1
  c.train.progress = True
  # Early stopping on checkpoint.best_metric (the same metric picks the best checkpoint).
  c.train.early_stopping_patience = 0  # evaluations without improvement; 0 = off
  c.train.early_stopping_min_delta = 0.0
  c.train.overfit_alarm_evals = 3  # warn when train loss falls and eval loss rises this often; 0 = off
  # Causal LM runs with a tokenizer: greedy completions of this many validation prompts go to
  # TensorBoard's text tab (and text.jsonl) at every evaluation; 0 = off.
  c.train.text_samples = 0
  c.train.text_sample_tokens = 32  # new tokens per text sample

  c.optim = optim.default_config()

  c.lora = lora.default_config()  # rank 0 = full fine-tuning

  c.export = ml_collections.ConfigDict()
  c.export.enabled = False  # write workdir/export (HF format) at the end, from the best weights
  c.export.merge_lora = True  # False: a PEFT adapter directory instead of merged weights
  c.export.dtype = ""  # '' = the parameter dtype; e.g. 'bfloat16'

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50
  c.checkpoint.every_minutes = 0.0
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "eval/loss"
  c.checkpoint.best_mode = "min"
  c.checkpoint.async_save = True
  return c


def _check(cond: bool, key: str, value, why: str) -> None:
  if not cond:
    raise ConfigError(f"config: {key}={value!r}: {why}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Check values that types alone do not catch; errors name the key."""
  _check(c.model.task in TASKS, "model.task", c.model.task, f"expected one of {TASKS}")
  _check(c.model.attention in ("auto", "xla", "cudnn"), "model.attention", c.model.attention,
         "auto|xla|cudnn")
  _check(c.model.pooling in bert.POOLINGS, "model.pooling", c.model.pooling, "|".join(bert.POOLINGS))
  _check(c.model.pooling == "cls" or c.model.task == "seq_cls", "model.pooling", c.model.pooling,
         f"only sequence classification pools (model.task={c.model.task!r})")
  _check(c.model.remat in ("none", "full", "dots"), "model.remat", c.model.remat, "none|full|dots")
  if c.model.scan_layers:
    # Stacked weights have no layer index in their paths, so per-layer optimizer rules cannot apply.
    _check(c.optim.layerwise_lr_decay == 1.0, "optim.layerwise_lr_decay", c.optim.layerwise_lr_decay,
           "per-layer learning rates need model.scan_layers=False")
    _check(c.optim.unfreeze_every_steps == 0, "optim.unfreeze_every_steps",
           c.optim.unfreeze_every_steps, "gradual unfreezing needs model.scan_layers=False")
  for k in ("param_dtype", "compute_dtype"):
    v = c.model[k]
    _check(v in ("float32", "bfloat16", "float16"), f"model.{k}", v, "float32|bfloat16|float16")
  _check(c.train.batch_size > 0, "train.batch_size", c.train.batch_size, "must be positive")
  _check(c.train.length_buckets >= 0, "train.length_buckets", c.train.length_buckets,
         "must be >= 0 (0 = off)")
  _check(c.train.micro_batches > 0 and c.train.batch_size % c.train.micro_batches == 0,
         "train.micro_batches", c.train.micro_batches, f"must divide train.batch_size={c.train.batch_size}")
  _check(c.train.steps > 0 or c.train.epochs > 0, "train.steps", c.train.steps, "must be positive (or set train.epochs)")
  _check(c.train.on_nonfinite in ("stop", "skip"), "train.on_nonfinite", c.train.on_nonfinite, "stop|skip")
  _check(0.0 <= c.train.max_skipped_fraction <= 1.0, "train.max_skipped_fraction",
         c.train.max_skipped_fraction, "must be in [0, 1]")
  _check(c.train.log_every > 0, "train.log_every", c.train.log_every, "must be positive")
  _check(c.checkpoint.best_mode in ("min", "max"), "checkpoint.best_mode", c.checkpoint.best_mode, "min|max")
  _check(c.export.dtype in ("", "float32", "bfloat16", "float16"), "export.dtype", c.export.dtype,
         "float32|bfloat16|float16, or '' for the dtype the run trained in")
  data_config.check(c.data)


class NotARunError(WorkdirError, FileNotFoundError):
  """A --workdir that does not exist, holds no `jaxtune train` run, or no checkpoint of one."""


def read_run_config(workdir) -> ml_collections.ConfigDict:
  """A run's workdir/config.json over today's defaults: a run written by an older jaxtune
  reads fields added since (e.g. model.pooling) as their defaults, which is what it ran with."""
  import json

  from etils import epath

  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    if not path.parent.is_dir():
      raise NotARunError(f"--workdir={workdir}: no such directory; give the workdir of a "
                         "`jaxtune train` run")
    raise NotARunError(f"--workdir={workdir}: not a `jaxtune train` run (it has no config.json); "
                       "give the directory that `jaxtune train --workdir` wrote")
  try:
    stored = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise NotARunError(f"{path}: unreadable JSON ({e}); the run's config is damaged") from e
  merged = default().to_dict()

  def overlay(base: dict, new: dict) -> None:
    for k, v in new.items():
      if isinstance(v, dict) and isinstance(base.get(k), dict):
        overlay(base[k], v)
      else:
        base[k] = v

  overlay(merged, stored)
  return ml_collections.ConfigDict(merged)


def parse_overrides(text: str, key: str = "model.config_overrides") -> dict:
  """'a=1,b=0.1,c=gelu' -> {'a': 1, 'b': 0.1, 'c': 'gelu'} (numbers parsed, rest strings)."""
  out: dict = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, value = part.partition("=")
    _check(bool(sep and name), key, text, f"expected name=value pairs, got {part!r}")
    for cast in (int, float):
      try:
        out[name.strip()] = cast(value)
        break
      except ValueError:
        continue
    else:
      out[name.strip()] = {"true": True, "false": False}.get(value.lower(), value)
  return out
