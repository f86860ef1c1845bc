"""Rows of a split as examples: text, label and origin, or the reason a row is unusable.

Shared by audit, clean and the training-split transforms so all three read a row alike. The
text of a sentence pair is 'text ‖ pair' for duplicate and leak checks. Labels are normalised
the way `clean` writes them: integers as plain digits ('1.0' -> '1'), names with spacing
collapsed and lower-cased ('Positive ' -> 'positive').
"""

from __future__ import annotations

import dataclasses

from jaxtune.data import classification
from jaxtune.data.quality import text as qtext
from jaxtune.data.readers import Row

PAIR_JOIN = " \u2016 "


@dataclasses.dataclass
class Example:
  row: Row
  text: str
  pair: str | None
  label: str | None  # normalised; None when the data has no label column
  clean_text: str = ""  # qtext.normalize(text), set by `parse`
  clean_pair: str | None = None

  @property
  def joined(self) -> str:
    return self.text if self.pair is None else self.text + PAIR_JOIN + self.pair

  @property
  def cleaned(self) -> str:
    """The normalised text duplicate and leak checks compare (and `clean` writes)."""
    return self.clean_text if self.pair is None else self.clean_text + PAIR_JOIN + self.clean_pair

  def where(self) -> dict:
    return self.row.origin()


def normalize_label(value, column: str) -> str:
  key = classification.label_key(value, column)  # raises RowError for missing/odd labels
  return str(key) if isinstance(key, int) else qtext.collapse_space(key).lower()


def parse(rows: list[Row], text_column: str, pair_column: str = "", label_column: str = "",
          ) -> tuple[list[Example], list[dict]]:
  """(usable examples, invalid rows as {file, row, reason, content}), both in row order.

  A text that normalises to nothing (only markup or control characters) is invalid too: it
  would train on an empty string.
  """
  examples, invalid = [], []
  for r in rows:
    try:
      text = classification.text_field(r.fields, text_column)
      pair = classification.text_field(r.fields, pair_column) if pair_column else None
      label = normalize_label(r.fields.get(label_column), label_column) if label_column else None
    except classification.RowError as e:
      invalid.append({**r.origin(), "reason": str(e), "content": r.fields})
      continue
    ex = Example(r, text, pair, label, qtext.normalize(text),
                 None if pair is None else qtext.normalize(pair))
    if not ex.clean_text or (pair is not None and not ex.clean_pair):
      invalid.append({**r.origin(), "reason": "empty after cleaning (only markup, controls or spaces)",
                      "content": r.fields})
      continue
    examples.append(ex)
  return examples, invalid
