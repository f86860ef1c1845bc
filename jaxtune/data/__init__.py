"""Data sets for training: build the train / validation (/ test) splits a config asks for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxtune.data.pipeline import Dataset


@dataclasses.dataclass
class Splits:
  """Named splits plus what the model and loss need to know about the labels."""

  splits: dict[str, Dataset]
  num_labels: int | None = None
  label_names: tuple[str, ...] = ()
  class_weights: tuple[float, ...] | None = None
  # split -> the original rows (text, label, origin), indexed by the `example_id` array.
  examples: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
  stats: dict = dataclasses.field(default_factory=dict)  # rows read, skipped, truncated, ...
  tokenizer: object = None

  def __getitem__(self, name: str) -> Dataset:
    if name not in self.splits:
      raise KeyError(f"no {name!r} split; have {sorted(self.splits)}")
    return self.splits[name]

  def __contains__(self, name: str) -> bool:
    return name in self.splits


def build(config, workdir: str | Path) -> Splits:
  kind = config.data.kind
  if kind == "synthetic":
    from jaxtune.data import synthetic

    return Splits({
      "train": synthetic.text_dataset(config.data.train_rows, config.data.seq_len, config.seed),
      "validation": synthetic.text_dataset(config.data.eval_rows, config.data.seq_len, config.seed + 10_000),
    })
  raise ValueError(f"config: data.kind={kind!r} is not supported (known: 'synthetic')")
