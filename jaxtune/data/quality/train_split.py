"""`data.min_confidence`, `clean`, `dedup`, `balance` and `augment` on a run's training rows.

Only the train split changes; validation and test stay as read, so scores remain comparable
with runs that use none of these (data.clean also fixes the spelling of label names in every
split, so ' Positive' and 'positive' are one class everywhere). Order: min_confidence (rows
under data.min_confidence) -> clean (normalise texts, drop those that cleaning leaves empty;
rows empty or unusable to begin with stay bad rows of the task) -> dedup (exact or near duplicates within train, and train rows that occur in validation/test) ->
balance (resample) -> augment (new rows appended after their source). All randomness comes
from the run seed. Every dropped row is returned with its reason for workdir/dropped_rows.jsonl.
"""

from __future__ import annotations

import collections

import numpy as np

from jaxtune.data import classification
from jaxtune.data import config as data_config
from jaxtune.data.quality import augment, balance, dedup
from jaxtune.data.quality import text as qtext
from jaxtune.data.rows import Row


def enabled(d) -> bool:
  return bool(d.clean or d.dedup or d.balance or d.augment or d.min_confidence or d.label_errors)


def _text(row: Row, d) -> str | None:
  value = row.fields.get(d.text_column)
  return value if isinstance(value, str) else None


def _with_text(row: Row, d, text: str, **extra) -> Row:
  return Row({**row.fields, d.text_column: text, **extra}, row.file, row.row)


def apply(rows: dict[str, list[Row]], d, seed: int, workdir=None
          ) -> tuple[dict[str, list[Row]], list[dict], dict]:
  """(rows with train transformed, dropped rows {split, file, row, step, reason, content}, stats).

  `workdir`: where data.label_errors caches its embeddings (label_error_embeddings.npz).
  """
  train = list(rows["train"])
  dropped: list[dict] = []
  stats: dict = {"train_rows_before": len(train)}

  def drop(row: Row, step: str, reason: str, **extra):
    dropped.append({"split": "train", **row.origin(), "step": step, "reason": reason,
                    "content": row.fields, **extra})

  if d.min_confidence:
    values = classification.numeric_column(
      train, d.confidence_column, "confidence_column",
      data_config.parse_missing_confidence(d.missing_confidence))
    for r, v in zip(train, values):
      if v < d.min_confidence:
        drop(r, "min_confidence", f"{d.confidence_column} {v:g} < data.min_confidence={d.min_confidence:g}")
    train = [r for r, v in zip(train, values) if v >= d.min_confidence]

  if d.clean:
    # Label spellings are fixed in every split; train continues from the rows kept so far (not
    # from rows["train"], which would bring back what min_confidence dropped).
    rows = {name: [_fix_label(r, d) for r in (train if name == "train" else split)]
            for name, split in rows.items()}
    train = list(rows["train"])
    out = []
    for r in train:
      text = _text(r, d)
      pair = r.fields.get(d.text_pair_column) if d.text_pair_column else None
      if text is None or not text.strip():
        out.append(r)  # no text to begin with: the task reports it (data.on_bad_row), as always
        continue
      cleaned = qtext.normalize(text)
      extra = {d.text_pair_column: qtext.normalize(pair)} if isinstance(pair, str) else {}
      if not cleaned or (extra and not extra[d.text_pair_column]):
        drop(r, "clean", "empty after cleaning (only markup, controls or spaces)")
        continue
      out.append(_with_text(r, d, cleaned, **extra))
    train = out

  if d.dedup:
    near = dedup.NearParams(threshold=d.dedup_threshold if d.dedup == "near" else 0.0, seed=seed)
    joined = [_joined(r, d) for r in train]
    live = [i for i, t in enumerate(joined) if t]
    gone: set[int] = set()
    for m in dedup.duplicates([joined[i] for i in live], near):
      i, of = live[m.index], live[m.of]
      drop(train[i], f"{m.kind}_duplicate", f"{m.kind} duplicate of row {train[of].row}",
           of=train[of].origin())
      gone.add(i)
    rest = [i for i in live if i not in gone]
    for name, other in rows.items():
      if name == "train":
        continue
      other_text = [_joined(r, d) for r in other]
      other_live = [j for j, t in enumerate(other_text) if t]
      for m in dedup.leaks([joined[i] for i in rest], [other_text[j] for j in other_live], near):
        i = rest[m.of]
        if i not in gone:
          src = other[other_live[m.index]]
          drop(train[i], "leak", f"{m.kind} copy of {name} row {src.row}", of=src.origin())
          gone.add(i)
    train = [r for i, r in enumerate(train) if i not in gone]

  if d.label_errors:
    train = _label_errors(train, d, seed, workdir, drop, stats)

  if d.balance in balance.MODES:
    labels = [_label(r, d) for r in train]
    has = [i for i, lab in enumerate(labels) if lab is not None]
    picked = balance.resample([labels[i] for i in has], d.balance, np.random.default_rng([seed, 1]))
    chosen = collections.Counter(has[k] for k in picked)
    if d.balance == "undersample":
      for i in has:
        if i not in chosen:
          drop(train[i], "undersample", f"undersampled class {labels[i]!r}")
    out = []
    for i, r in enumerate(train):
      copies = chosen[i] if labels[i] is not None else 1
      out += [r] * copies  # a copy keeps its origin, so errors still point at the file row
    train = out
    stats["label_counts_after_balance"] = dict(collections.Counter(
      lab for lab in (_label(r, d) for r in train) if lab is not None))

  if d.augment:
    ops = data_config.parse_augment(d.augment)
    translator = augment.load_translator(d.augment_translator) if "backtranslate" in ops else None
    aug = augment.Augmenter(ops, d.augment_rate, translator=translator)
    usable = [i for i, r in enumerate(train) if _label(r, d) is not None]  # the task keeps these
    made = aug([train[i].fields[d.text_column] for i in usable], np.random.default_rng([seed, 2]),
               d.augment_copies)
    extra = collections.defaultdict(list)
    for k, op, new in made:
      extra[usable[k]].append(_with_text(train[usable[k]], d, new, augmented=op))
    train = [x for i, r in enumerate(train) for x in [r, *extra[i]]]
    stats["augmented_rows"] = len(made)
    stats["augmented_by_op"] = dict(collections.Counter(op for _, op, _ in made))

  stats["train_rows_after"] = len(train)
  stats["dropped_by_step"] = dict(collections.Counter(r["step"] for r in dropped))
  return {**rows, "train": train}, dropped, stats


def _label_errors(train: list[Row], d, seed: int, workdir, drop, stats: dict) -> list[Row]:
  """data.label_errors: drop, or relabel to the suggestion, the rows confident learning flags."""
  import os

  from jaxtune.data.quality import label_errors

  cache = os.path.join(workdir, "label_error_embeddings.npz") if workdir else None
  settings = label_errors.Settings(folds=d.label_error_folds, encoder=d.label_error_encoder,
                                   seq_len=d.seq_len, seed=seed)
  result, names, scored = label_errors.detect(train, d, settings, cache)
  changed = {}
  for issue in result.issues:
    i = scored[issue.index]
    given, suggested = names[issue.given], names[issue.suggested]
    if d.label_errors == "drop":
      drop(train[i], "label_error", f"label {given!r} contradicted: {suggested!r} at "
           f"{issue.p_suggested:.2f} (out of fold)")
      changed[i] = None
    else:  # listed with the dropped rows so every change to train is in one file
      drop(train[i], "label_error_relabel", f"relabelled {given!r} -> {suggested!r} "
           f"({issue.p_suggested:.2f} out of fold)")
      changed[i] = Row({**train[i].fields, d.label_column: suggested}, train[i].file, train[i].row)
  stats["label_errors"] = result.summary(names)
  return [changed.get(i, r) for i, r in enumerate(train) if changed.get(i, r) is not None]


def _joined(row: Row, d) -> str:
  """The normalised text the duplicate checks compare; '' for rows without usable text."""
  text = _text(row, d)
  if text is None:
    return ""
  pair = row.fields.get(d.text_pair_column) if d.text_pair_column else None
  out = qtext.normalize(text)
  return out + (" \u2016 " + qtext.normalize(pair) if isinstance(pair, str) else "") if out else ""


def _label(row: Row, d):
  """The row's label key, or None when the task would reject the row (no text, no label)."""
  try:
    classification.text_field(row.fields, d.text_column)
    if d.text_pair_column:
      classification.text_field(row.fields, d.text_pair_column)
    return classification.label_key(row.fields.get(d.label_column), d.label_column)
  except classification.RowError:
    return None


def _fix_label(row: Row, d) -> Row:
  """A label name spelt as data.label_names spells it, else collapsed and lower-cased.

  ' Positive' and 'positive' must be one class; done in every split, since a class spelt
  differently in train and test would fail as an unknown label.
  """
  value = row.fields.get(d.label_column)
  if not isinstance(value, str) or not value.strip():
    return row
  names = data_config.parse_label_names(d.label_names)
  key = qtext.collapse_space(value).lower()
  fixed = {n.lower(): n for n in names}.get(key, value if names else key)
  return row if fixed == value else Row({**row.fields, d.label_column: fixed}, row.file, row.row)

