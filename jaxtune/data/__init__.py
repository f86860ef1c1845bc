"""Data sets for training: build the train / validation (/ test) splits a config asks for.

kind='synthetic' generates text (no tokenizer); 'classification', 'sft' and 'preference' read a
file, builtin or hub data set (`readers`), split it with a fixed seed, tokenize (`classification`,
`sft`, `packing`, `preference`) and report what happened in `Splits.stats`. For classification,
data.clean / dedup / balance / augment transform the train rows first (`quality.train_split`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxtune.data import config as data_config
from jaxtune.data import readers, split
from jaxtune.data.pipeline import Dataset, Splits  # noqa: F401 (data.Splits)
from jaxtune.data.tokenizer import load_tokenizer  # noqa: F401 (data.load_tokenizer)
from jaxtune.errors import ConfigError

log = logging.getLogger(__name__)


def build(config, workdir: str | Path) -> Splits:
  """The splits `config.data` asks for; bad rows raise or go to workdir/skipped_rows.jsonl."""
  d = config.data
  data_config.check(d)
  if d.kind == "synthetic":
    from jaxtune.data import synthetic

    return Splits({
      "train": synthetic.text_dataset(d.train_rows, d.seq_len, config.seed),
      "validation": synthetic.text_dataset(d.eval_rows, d.seq_len, config.seed + 10_000),
    })
  d = _with_builtin_defaults(d)
  bad = readers.BadRows(d.on_bad_row)
  rows = read_splits(d, bad)
  quality_stats = None
  if d.kind == "classification":
    from jaxtune.data.quality import train_split

    if train_split.enabled(d):
      rows, dropped, quality_stats = train_split.apply(rows, d, config.seed, workdir)
      if jax.process_index() == 0:
        _write_jsonl(Path(workdir) / "dropped_rows.jsonl", dropped)
      if d.balance == "class_weights":
        d = ml_collections.ConfigDict(d.to_dict())
        d.class_weights = "balanced"
  if d.max_kept_train_rows and len(rows["train"]) > d.max_kept_train_rows:
    rows = {**rows, "train": _at_most(rows["train"], d.max_kept_train_rows, d.split_seed)}
    if quality_stats is not None:
      quality_stats["train_rows_drawn"] = d.max_kept_train_rows
  splits = _tokenize(config, d, rows, bad, workdir, "skipped_rows.jsonl")
  if quality_stats is not None:
    splits.stats["quality"] = quality_stats
    log.info("data quality on train: %s", quality_stats)
  return splits


def _at_most(train: list, n: int, split_seed: int) -> list:
  """A seeded subset of at most `n` train rows in file order (all when n is 0 or enough).

  Seeded by split_seed only: the same rows for every run seed, and for every quality variant
  that kept the same rows.
  """
  if not n or len(train) <= n:
    return train
  pick = np.random.default_rng([split_seed, 2]).choice(len(train), n, replace=False)
  return [train[i] for i in sorted(pick)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
  """Rewritten on every build, like skipped_rows.jsonl, so it never holds a stale run's rows."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def build_eval(config, source: str, workdir: str | Path) -> Splits:
  """One split, 'eval', of every row of `source`, encoded as the run `config` encodes data.

  For scoring a file after training: the run's tokenizer, seq_len and columns, and its label
  names when `config.data.label_names` carries them. Skipped rows go to
  workdir/skipped_rows_eval.jsonl, leaving the training run's list alone.
  """
  d = ml_collections.ConfigDict(config.data.to_dict())
  data_config.check(d)
  if d.kind == "synthetic":
    raise ConfigError("config: data.kind='synthetic': the run trained on generated data, so it has "
                      "no columns or tokenizer to read a file with; evaluate a run that read files")
  d.source = source
  d.class_weights = ""  # training-only; 'balanced' would fail on a file lacking a class
  bad = readers.BadRows(d.on_bad_row)
  rows = {"eval": readers.read(source, bad, text_key=d.text_column)}
  return _tokenize(config, d, rows, bad, workdir, "skipped_rows_eval.jsonl")


def _tokenize(config, d, rows, bad, workdir, skipped_name: str) -> Splits:
  tokenizer = load_tokenizer(d.tokenizer or config.model.source)
  rows_read = sum(len(r) for r in rows.values())
  if d.kind == "classification":
    from jaxtune.data import classification

    # A fixed model.num_labels decides the classes the labels must fall in.
    splits = classification.build(rows, d, tokenizer, bad, num_labels=config.model.num_labels)
  elif d.kind == "preference":
    from jaxtune.data import preference

    splits = preference.build_splits(rows, d, tokenizer, bad)
  elif d.kind == "prompts":
    from jaxtune.data import prompts

    splits = prompts.build(rows, d, tokenizer, bad)
  else:
    from jaxtune.data import sft

    splits = sft.build(rows, d, tokenizer, bad)
  if jax.process_index() == 0:
    bad.write(workdir, skipped_name)
  per_split = splits.stats.pop("splits")
  splits.stats = {
    "source": d.source, "kind": d.kind, **splits.stats, "rows_read": rows_read,
    "skipped": len(bad), "skipped_by_reason": dict(bad.by_reason),
    "truncated": sum(s["truncated"] for s in per_split.values()),
    **({"loss_tokens": sum(s["loss_tokens"] for s in per_split.values())} if d.kind == "sft" else {}),
    **per_split,
  }
  splits.tokenizer = tokenizer
  log.info("data: %s", {k: v for k, v in splits.stats.items() if k not in per_split})
  return splits


def _with_builtin_defaults(d: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of the data config with a builtin's implied settings where fields are at default."""
  from jaxtune.data import builtin

  if d.source not in builtin.DEFAULTS:
    return d
  d = ml_collections.ConfigDict(d.to_dict())
  implied = builtin.DEFAULTS[d.source]
  if d.kind != implied["kind"]:
    raise ConfigError(f"config: data.kind={d.kind!r}: builtin {d.source!r} is {implied['kind']!r} "
                      f"data; set data.kind={implied['kind']!r}")
  defaults = data_config.default_data_config()
  for key, value in implied.items():
    if d[key] == defaults[key]:
      d[key] = value
  return d


def read_splits(d, bad: readers.BadRows) -> dict[str, list[readers.Row]]:
  """Rows per split: own sources where given, the rest carved from `source` by a seeded shuffle.

  Each split keeps file order (sorted row indices), so examples read like the file.
  """
  main = readers.read(d.source, bad, text_key=d.text_column)
  own = {name: readers.read(d[f"{name}_source"], bad, text_key=d.text_column)
         for name in ("validation", "test") if d[f"{name}_source"]}
  carved = split.carve(main, data_config.split_fractions(d.split), d.split_seed, own=own,
                       source=d.source, split=d.split)
  rows = {"train": carved["train"]}
  for name in ("validation", "test"):
    if name in own or name in carved:
      rows[name] = own[name] if name in own else carved[name]
  rows["train"] = _at_most(rows["train"], d.max_train_rows, d.split_seed)
  if d.max_rows:
    rng = np.random.default_rng([d.split_seed, 1])
    rows = {k: v if len(v) <= d.max_rows else
            [v[i] for i in sorted(rng.choice(len(v), d.max_rows, replace=False))]
            for k, v in rows.items()}
  return rows
