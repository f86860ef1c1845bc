"""The run configuration: every section with a real default, and checks that name the key.

Recipes in configs/ start from `default()` and change what they need. Every field has a typed
default (absl cannot override a field whose default is None), and the dict is locked so an
unknown key is an error.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from jaxtune import lora, objectives, optim, quantize, trackers
from jaxtune.data import config as data_config
from jaxtune.errors import ConfigError, WorkdirError
from jaxtune.models import bert
from jaxtune.objectives import grpo, preference

TASKS = objectives.TASKS
# What export.dtype and `jaxtune export --dtype` may be ('' = as trained).
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def default() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Where metrics go besides metrics.jsonl (always written), comma-separated: tensorboard
  # (events in workdir/tb) | mlflow | wandb; '' = metrics.jsonl only. See docs/guides/tracking.md.
  c.report_to = "tensorboard"

  c.model = ml_collections.ConfigDict()
  # An HF directory, .gguf file or hub id; or 'preset:<name>' for random weights (models.presets).
  c.model.source = "preset:tiny-llama"
  c.model.task = "causal_lm"
  c.model.num_labels = 0  # 0: from the data / checkpoint
  # What a BERT or MPNet classifier reads: cls (its head on the first token, as *ForSequenceClassification)
  # | mean (the mean of the tokens, as sentence-transformers encoders were trained; exported as a
  # sentence-transformers directory).
  c.model.pooling = "cls"
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "bfloat16"
  # '' (off) | int8 | nf4: a LoRA run's frozen base weights held quantized in memory and
  # dequantized inside each matmul (QLoRA; jaxtune.quantize, needs jaxtune[qlora]).
  c.model.quantize = ""
  c.model.remat = "none"  # none | full | dots
  # Layer weights stacked on a leading axis and run by one lax.scan: the layer compiles once and
  # the optimizer updates one array per weight (per-layer rules, such as layer-wise lr decay and
  # gradual unfreezing, act on its rows). Needs identical layers (LoRA on all or none); regexes
  # naming one layer (`layers/3/`) match nothing. Exports and generation unstack.
  c.model.scan_layers = False
  # auto (cuDNN flash attention on GPU when it applies, else XLA) | xla | cudnn
  c.model.attention = "auto"
  c.model.allow_pickle = False
  # HF config attributes to override (of a checkpoint or a preset), as "name=value,name=value"
  # (e.g. dropout rates).
  c.model.config_overrides = ""

  c.data = data_config.default_data_config()
  # model.task='preference': the loss (DPO, IPO, hinge, SimPO, ORPO) and its reference.
  c.preference = preference.default_config()

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "population": -1})

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
  # Classification: at each evaluation also score this many train rows (a fixed seeded sample),
  # for train vs validation accuracy/F1 curves (jaxtune.train_curves); -1 = min(validation
  # rows, 1000), 0 = off.
  c.train.train_metric_rows = -1
  # Causal LM runs with a tokenizer: greedy completions of this many validation prompts go
  # to TensorBoard's text tab (and text.jsonl) at step 0 and every evaluation; 0 = off.
  c.train.text_samples = 0
  c.train.text_sample_tokens = 32  # new tokens per text sample

  c.optim = optim.default_config()

  c.lora = lora.default_config()  # rank 0 = full fine-tuning

  c.grpo = grpo.default_config()  # model.task='grpo' only (jaxtune/objectives/grpo.py)

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

  # MLflow and W&B (report_to=mlflow,wandb); how a run is reported, never what it trains.
  c.tracking = ml_collections.ConfigDict()
  # MLflow tracking URI; '' = MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db (in a
  # search, the study directory's mlflow.db, for every trial)
  c.tracking.mlflow_uri = ""
  c.tracking.experiment = ""  # MLflow experiment and W&B project; '' = the recipe's name
  c.tracking.run_name = ""  # '' = the workdir's name (a search: the trial's)
  # Runs of one group (a search sets its study name): MLflow child runs of the group's parent
  # run, the W&B group.
  c.tracking.group = ""
  return c


def _check(cond: bool, key: str, value, why: str) -> None:
  if not cond:
    raise ConfigError(f"config: {key}={value!r}: {why}")


def _get(c: ml_collections.ConfigDict, key: str):
  node = c
  for part in key.split("."):
    node = node[part]
  return node


# Numeric keys and the interval each must lie in: '[' / ']' closed, '(' / ')' open, 'inf' no
# bound; every value must also be finite. Integer fields are typed by the ConfigDict already.
RANGES = {
  "seed": "[0, inf)",
  "model.num_labels": "[0, inf)",
  "data.seq_len": "[2, inf)",
  "data.train_rows": "[1, inf)",
  "data.eval_rows": "[1, inf)",
  "data.split_seed": "[0, inf)",
  "data.max_rows": "[0, inf)",
  "data.max_train_rows": "[0, inf)",
  "data.max_kept_train_rows": "[0, inf)",
  "data.dedup_threshold": "(0, 1)",
  "data.augment_rate": "(0, 1]",
  "data.augment_copies": "[1, inf)",
  "train.steps": "[0, inf)",
  "train.epochs": "[0, inf)",
  "train.batch_size": "[1, inf)",
  "train.micro_batches": "[1, inf)",
  "train.length_buckets": "[0, inf)",
  "train.log_every": "[1, inf)",
  "train.eval_every": "[0, inf)",
  "train.eval_batch_size": "[1, inf)",
  "train.early_stopping_patience": "[0, inf)",
  "train.early_stopping_min_delta": "[0, inf)",
  "train.overfit_alarm_evals": "[0, inf)",
  "train.train_metric_rows": "[-1, inf)",
  "train.text_samples": "[0, inf)",
  "train.text_sample_tokens": "[1, inf)",
  "train.max_skipped_fraction": "[0, 1]",
  "optim.learning_rate": "(0, inf)",
  "optim.b1": "[0, 1)",
  "optim.b2": "[0, 1)",
  "optim.eps": "(0, inf)",
  "optim.weight_decay": "[0, inf)",
  "optim.momentum": "[0, 1)",
  "optim.rmsprop_decay": "[0, 1)",
  "optim.adafactor_decay_rate": "(0, 1]",
  "optim.adafactor_clipping_threshold": "[0, inf)",
  "optim.adafactor_min_dim_size_to_factor": "[1, inf)",
  "optim.warmup_steps": "[0, inf)",
  "optim.min_lr_ratio": "[0, 1]",
  "optim.wsd_decay_fraction": "[0, 1]",
  "optim.grad_clip_norm": "[0, inf)",
  "optim.l1": "[0, inf)",
  "optim.l2": "[0, inf)",
  "optim.layerwise_lr_decay": "(0, 1]",
  "optim.unfreeze_every_steps": "[0, inf)",
  "optim.unfreeze_start_layers": "[0, inf)",
  "optim.ema_decay": "[0, 1)",
  "optim.swa_start": "[-1, inf)",
  "optim.swa_every": "[1, inf)",
  "lora.rank": "[0, inf)",
  "lora.alpha": "(0, inf)",
  "lora.dropout": "[0, 1)",
  "checkpoint.every_steps": "[0, inf)",
  "checkpoint.every_minutes": "[0, inf)",
  "checkpoint.keep_last": "[1, inf)",
  "checkpoint.keep_best": "[0, inf)",
  "mesh.fsdp": "[1, inf)",
  "mesh.tensor": "[1, inf)",
}


def _in_range(value, interval: str) -> bool:
  lo, hi = (float(x) for x in interval[1:-1].split(","))
  above = value >= lo if interval[0] == "[" else value > lo
  below = value <= hi if interval[-1] == "]" else value < hi
  return math.isfinite(value) and above and below


def _range_text(interval: str) -> str:
  lo, hi = (x.strip() for x in interval[1:-1].split(","))
  if hi == "inf":
    return f"must be a finite number {'>=' if interval[0] == '[' else '>'} {lo}"
  return f"must be a finite number in {interval}"


# Keys read only in some settings: (key, whether it is read, the setting that reads it). A key
# the user sets where nothing reads it is refused (`check_ignored`), not silently dropped.
_FILE_DATA = ("source", "validation_source", "test_source", "split", "split_seed", "max_rows",
              "max_train_rows", "max_kept_train_rows", "on_bad_row", "tokenizer", "text_column")
_CLASSIFICATION_DATA = ("text_pair_column", "label_column", "label_names", "class_weights")
_SFT_DATA = ("completion_column", "messages_column", "completion_only", "pack")
READ_WHEN = (
  *((f"data.{k}", lambda c: c.data.kind == "synthetic", "data.kind='synthetic'")
    for k in ("train_rows", "eval_rows")),
  *((f"data.{k}", lambda c: c.data.kind != "synthetic", "data.kind='classification' or 'sft'")
    for k in _FILE_DATA),
  *((f"data.{k}", lambda c: c.data.kind == "classification", "data.kind='classification'")
    for k in _CLASSIFICATION_DATA),
  *((f"data.{k}", lambda c: c.data.kind == "sft", "data.kind='sft'") for k in _SFT_DATA),
  ("data.sft_format", lambda c: c.data.kind in ("sft", "prompts"), "data.kind='sft' or 'prompts'"),
  *((f"data.{k}", lambda c: c.data.kind in ("sft", "preference", "prompts"),
     "data.kind='sft', 'preference' or 'prompts'") for k in ("prompt_column", "system_prompt")),
  *((f"data.{k}", lambda c: c.data.kind == "preference", "data.kind='preference'")
    for k in ("chosen_column", "rejected_column")),
  *((f"preference.{k}", lambda c: c.model.task == "preference", "model.task='preference'")
    for k in preference.default_config()),
  ("data.dedup_threshold", lambda c: c.data.dedup == "near", "data.dedup='near'"),
  *((f"data.{k}", lambda c: bool(c.data.augment), "data.augment")
    for k in ("augment_rate", "augment_copies", "augment_translator")),
  ("model.num_labels", lambda c: _objective_has(c, "labels"), "model.task='seq_cls'"),
  ("train.train_metric_rows", lambda c: _objective_has(c, "labels"), "model.task='seq_cls'"),
  ("model.allow_pickle", lambda c: not c.model.source.startswith("preset:"),
   "an HF model.source (a preset has no files)"),
  ("train.text_samples", lambda c: _objective_has(c, "generates") and c.data.kind != "synthetic",
   "model.task='causal_lm' with a tokenizer (data.kind='sft')"),
  ("train.text_sample_tokens", lambda c: c.train.text_samples > 0, "train.text_samples > 0"),
  ("train.early_stopping_min_delta", lambda c: c.train.early_stopping_patience > 0,
   "train.early_stopping_patience > 0"),
  ("optim.b1", lambda c: c.optim.name in ("adamw", "lion", "adafactor"), "optim.name=adamw|lion|adafactor"),
  ("optim.b2", lambda c: c.optim.name in ("adamw", "lion"), "optim.name=adamw|lion"),
  ("optim.eps", lambda c: c.optim.name in ("adamw", "rmsprop"), "optim.name=adamw|rmsprop"),
  ("optim.momentum", lambda c: c.optim.name in ("sgd", "rmsprop"), "optim.name=sgd|rmsprop"),
  ("optim.nesterov", lambda c: c.optim.name in ("sgd", "rmsprop") and c.optim.momentum > 0,
   "optim.name=sgd|rmsprop with optim.momentum > 0"),
  ("optim.rmsprop_decay", lambda c: c.optim.name == "rmsprop", "optim.name=rmsprop"),
  *((f"optim.{k}", lambda c: c.optim.name == "adafactor", "optim.name=adafactor")
    for k in ("adafactor_decay_rate", "adafactor_clipping_threshold",
              "adafactor_min_dim_size_to_factor", "adafactor_param_scale")),
  ("optim.min_lr_ratio", lambda c: c.optim.schedule in ("linear", "cosine", "wsd"),
   "optim.schedule=linear|cosine|wsd"),
  ("optim.wsd_decay_fraction", lambda c: c.optim.schedule == "wsd", "optim.schedule=wsd"),
  ("optim.unfreeze_start_layers", lambda c: c.optim.unfreeze_every_steps > 0,
   "optim.unfreeze_every_steps > 0"),
  ("optim.swa_every", lambda c: c.optim.swa_start >= 0, "optim.swa_start >= 0"),
  *((f"lora.{k}", lambda c: c.lora.rank > 0, "lora.rank > 0")
    for k in ("alpha", "dropout", "targets", "train_also", "init", "use_rslora")),
  ("export.merge_lora", lambda c: c.lora.rank > 0, "lora.rank > 0"),
  *((f"grpo.{k}", lambda c: c.model.task == "grpo", "model.task='grpo'") for k in grpo.default_config()),
  *((f"tracking.{k}", lambda c: trackers.uses_runs(c), "report_to=mlflow and/or wandb")
    for k in ("experiment", "run_name", "group")),
  ("tracking.mlflow_uri", lambda c: "mlflow" in trackers.parse(c.report_to), "report_to=mlflow"),
)


def _objective_has(c: ml_collections.ConfigDict, what: str) -> bool:
  """Whether the objective of `c` (none for an unknown model.task) is `what` (labels, ...)."""
  objective = objectives.REGISTRY.get(c.model.task)
  return bool(objective and getattr(objective, what))


def check_dtype(dtype: str | None, name: str) -> None:
  """Refuse a weight dtype that is not a float: casting weights to int8 makes them all zeros."""
  if dtype and dtype not in EXPORT_DTYPES:
    raise ConfigError(f"{name}={dtype!r}: exported weights must be one of {', '.join(EXPORT_DTYPES)} "
                      "(leave it empty to keep the dtype the run trained in); jaxtune does not "
                      "quantize to integers")


def known_variants(recipe: str, arg: str | None, known: tuple[str, ...] = (),
                   one_of: tuple[str, ...] = ()) -> set[str]:
  """A recipe's comma-separated variants (`configs/<recipe>.py:a,b`), each checked against
  `known` (at most one of `one_of`): every recipe refuses a variant it does not define rather
  than run without it."""
  args = {a.strip() for a in (arg or "").split(",")} - {""}
  unknown = sorted(args - set(known))
  if unknown:
    close = difflib.get_close_matches(unknown[0], known, n=1)
    raise ConfigError(
      f"{recipe}: unknown variant(s) {', '.join(map(repr, unknown))}; known variants: "
      f"{', '.join(known) if known else 'none (use the recipe without :variant)'}"
      + (f" (did you mean {close[0]!r}?)" if close else ""))
  if len(args & set(one_of)) > 1:
    raise ConfigError(f"{recipe}: variants {', '.join(sorted(args & set(one_of)))} exclude each "
                      f"other: pick one of {', '.join(one_of)}")
  return args


def changed_keys(c: ml_collections.ConfigDict) -> list[str]:
  """The READ_WHEN keys whose values in `c` differ from `default()` (what a recipe sets)."""
  defaults = default()
  return [key for key, *_ in READ_WHEN if _get(c, key) != _get(defaults, key)]


def check_ignored(c: ml_collections.ConfigDict, keys) -> None:
  """Refuse each of `keys` (those the user set, e.g. `--config.a.b=v`) that `c`'s settings do
  not read: `data.source` on synthetic data, `lora.alpha` with LoRA off, `optim.momentum` on
  adamw. A recipe's own values are not blamed, so `--config.lora.rank=0` on a LoRA recipe
  simply turns LoRA off; recipes are held to this by tests through `changed_keys`."""
  keys = set(keys)
  defaults = default()
  for key, read, setting in READ_WHEN:
    value = _get(c, key)
    _check(key not in keys or read(c) or value == _get(defaults, key), key, value,
           f"only read with {setting}, so this run would ignore it; remove it or set {setting}")


def check_best_metric(c: ml_collections.ConfigDict, label_names=()) -> None:
  """checkpoint.best_metric must be a metric the task's evaluation reports (a misspelt one
  would never improve: early stopping would end the run and no checkpoint would be best).
  Per-class metrics (eval/f1/<label>) are checked against `label_names` once known."""
  objective = objectives.get(c)
  name = c.checkpoint.best_metric
  if objective.accepts_metric(name, label_names):
    return
  valid = objective.metric_names(label_names)
  close = difflib.get_close_matches(name, valid, n=1)
  _check(False, "checkpoint.best_metric", name,
         f"model.task={c.model.task!r} reports {', '.join(valid)}"
         + (", and eval/precision|recall|f1/<label>" if objective.labels and not label_names else "")
         + (f"; did you mean {close[0]!r}?" if close else ""))


def validate(c: ml_collections.ConfigDict) -> None:
  """Check values that types alone do not catch, before any data is read or any step
  compiles; errors name the key."""
  for key, interval in RANGES.items():
    value = _get(c, key)
    _check(_in_range(value, interval), key, value, _range_text(interval))
  _check(c.mesh.data == -1 or c.mesh.data >= 1, "mesh.data", c.mesh.data,
         "must be -1 (the devices the other axes leave) or >= 1")
  _check(c.mesh.population == -1 or c.mesh.population >= 1, "mesh.population", c.mesh.population,
         "must be -1 (as many groups as divide the members and devices) or >= 1")
  _check(c.model.num_labels != 1, "model.num_labels", c.model.num_labels,
         "a classifier needs at least 2 labels (0 = from the data)")
  names = data_config.parse_label_names(c.data.label_names)
  _check(not (names and c.model.num_labels) or len(names) == c.model.num_labels,
         "data.label_names", c.data.label_names,
         f"{len(names)} names for model.num_labels={c.model.num_labels}")
  _check(c.model.task in TASKS, "model.task", c.model.task, f"expected one of {TASKS}")
  _check(c.model.attention in ("auto", "xla", "cudnn"), "model.attention", c.model.attention,
         "auto|xla|cudnn")
  _check(c.model.pooling in bert.POOLINGS, "model.pooling", c.model.pooling, "|".join(bert.POOLINGS))
  head = objectives.get(c).head  # the model head the objective trains (an architecture)
  _check(c.model.pooling == "cls" or head == "seq_cls", "model.pooling", c.model.pooling,
         f"only sequence classification pools (model.task={c.model.task!r})")
  _check(c.model.remat in ("none", "full", "dots"), "model.remat", c.model.remat, "none|full|dots")
  quantize.check(c.model.quantize, c.lora.rank)
  overrides = parse_overrides(c.model.config_overrides)
  if c.model.source.startswith("preset:"):
    from jaxtune.models import presets

    # Unknown names and attributes now, not after the data is read (a classifier's label count
    # may come from the data later; any count checks the overrides alike).
    presets.model_config(c.model.source.removeprefix("preset:"), task=head,
                         num_labels=c.model.num_labels or 2, pooling=c.model.pooling,
                         config_overrides=overrides)
  for k in ("param_dtype", "compute_dtype"):
    v = c.model[k]
    _check(v in ("float32", "bfloat16", "float16"), f"model.{k}", v, "float32|bfloat16|float16")
  _check(c.train.batch_size % c.train.micro_batches == 0,
         "train.micro_batches", c.train.micro_batches, f"must divide train.batch_size={c.train.batch_size}")
  _check(c.train.steps > 0 or c.train.epochs > 0, "train.steps", c.train.steps, "must be positive (or set train.epochs)")
  _check(c.train.on_nonfinite in ("stop", "skip"), "train.on_nonfinite", c.train.on_nonfinite, "stop|skip")
  _check(c.checkpoint.best_mode in ("min", "max"), "checkpoint.best_mode", c.checkpoint.best_mode, "min|max")
  trackers.check(c.report_to)  # names, and the package of each (mlflow, wandb) installed
  check_dtype(c.export.dtype, "export.dtype")  # the rule `jaxtune export --dtype` uses
  check_best_metric(c, names)
  data_config.check_files(c.data)  # a missing data file is the first thing to say
  _check(c.data.kind == "synthetic" or bool(c.data.tokenizer)
         or not c.model.source.startswith("preset:"), "data.tokenizer", c.data.tokenizer,
         f"model.source={c.model.source!r} has no tokenizer and data.kind={c.data.kind!r} needs "
         "one: set data.tokenizer to an HF directory, .gguf file or hub id")
  # The optimizer's and LoRA's own checks (names, schedules, regexes), now rather than after the
  # data is read; with train.epochs the schedule is checked once the steps are known.
  optim.check(c.optim, c.train.steps if c.train.epochs == 0 else None)
  lora.resolve(c.lora)
  data_config.check(c.data)
  objectives.get(c).check_config(c)


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
