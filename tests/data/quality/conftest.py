"""A data set with known problems planted at known rows, for audit / clean / training tests.

Base sentences are English frames around made-up words, so no two are alike by chance
(character 5-gram Jaccard near 0) and the language check sees English. `Planted` records the
1-based file rows of every planted problem, so tests compare exact counts and exact rows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from jaxtune.data.config import default_data_config


def base_sentences(n: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  letters = np.array(list("bcdfghjklmnprstvwz"))
  vowels = np.array(list("aeiou"))

  def word():
    k = int(rng.integers(2, 4))
    return "".join(str(rng.choice(letters)) + str(rng.choice(vowels)) for _ in range(k))

  return [f"the {word()} was {word()} and the {word()} of {word()} is {word()} with {word()} for {word()}"
          for _ in range(n)]


FRENCH = ("Ce film est vraiment magnifique, les acteurs sont excellents et je le recommande "
          "vivement à tous mes amis qui aiment le cinéma.")


@dataclasses.dataclass
class Planted:
  train: Path
  validation: Path
  test: Path
  rows: dict[str, dict[str, list[int]]]  # split -> problem -> 1-based file rows
  train_labels: dict[str, int]  # label counts of the valid train rows before any cleaning
  leaked_train_rows: list[int]  # train rows copied into validation/test

  def data_config(self, **kw):
    d = default_data_config()
    d.kind = "classification"
    d.source = str(self.train)
    d.validation_source = str(self.validation)
    d.test_source = str(self.test)
    for k, v in kw.items():
      d[k] = v
    return d


def _write(path: Path, rows: list) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def build_planted(tmp: Path) -> Planted:
  base = base_sentences(90, seed=7)
  train_base, val_base, test_base = base[:60], base[60:75], base[75:]
  rows: list = []
  where: dict[str, list[int]] = {}

  def add(kind: str, row) -> None:
    rows.append(row)
    where.setdefault(kind, []).append(len(rows))

  # 60 clean rows, 48 'pos' and 12 'neg' (imbalance 4); one label written ' Pos'.
  for i, text in enumerate(train_base):
    add("base", {"text": text, "label": ("neg" if i % 5 == 4 else " Pos" if i == 10 else "pos")})
  add("exact", {"text": train_base[1], "label": "pos"})
  add("exact", {"text": "  " + train_base[2].replace(" was ", "   was "), "label": "pos"})  # spacing only
  add("exact", {"text": train_base[4], "label": "pos"})  # row 5 is 'neg': a conflicting label
  add("near", {"text": train_base[5] + " again", "label": "pos"})
  add("near", {"text": train_base[6].replace("the ", "The ", 1) + " too", "label": "pos"})
  add("invalid", {"text": "", "label": "pos"})
  add("invalid", {"text": "   ", "label": "neg"})
  add("invalid", {"text": "the label is missing from this row entirely"})
  add("invalid", {"text": "<br/><p></p>", "label": "pos"})  # empty once the markup is gone
  add("unreadable", '{"text": "broken json line", "label": ')
  extra = base_sentences(7, seed=99)
  add("mojibake", {"text": extra[0].replace(" was ", " cafÃ© was "), "label": "pos"})
  add("mojibake", {"text": extra[1] + " donâ€™t", "label": "neg"})
  add("control", {"text": extra[2].replace(" and ", " and\x07 "), "label": "pos"})
  add("html", {"text": extra[3].replace(" and ", " <b>and</b> "), "label": "pos"})
  add("url", {"text": extra[4] + " see https://example.com/review", "label": "pos"})
  add("language", {"text": FRENCH, "label": "pos"})
  train = tmp / "train.jsonl"
  _write(train, rows)

  val = [{"text": t, "label": "pos"} for t in val_base]
  val.append({"text": train_base[20], "label": "pos"})  # exact leak (train row 21)
  val.append({"text": train_base[21] + " indeed", "label": "pos"})  # near leak (train row 22)
  test = [{"text": t, "label": "neg"} for t in test_base]
  test.append({"text": train_base[30], "label": "pos"})  # exact leak (train row 31)
  _write(tmp / "validation.jsonl", val)
  _write(tmp / "test.jsonl", test)
  n_val, n_test = len(val_base), len(test_base)
  planted = {
    "train": where,
    "validation": {"exact_leak": [n_val + 1], "near_leak": [n_val + 2]},
    "test": {"exact_leak": [n_test + 1]},
  }
  labels = {"pos": 0, "neg": 0}
  for r in rows:
    if isinstance(r, dict) and r.get("label") and r["text"].strip() and r["text"] != "<br/><p></p>":
      labels[r["label"].strip().lower()] += 1
  return Planted(train, tmp / "validation.jsonl", tmp / "test.jsonl", planted, labels,
                 leaked_train_rows=[21, 22, 31])


@pytest.fixture
def planted(tmp_path) -> Planted:
  return build_planted(tmp_path)
