"""Text (or text-pair) classification rows -> padded token arrays and integer labels.

Labels in the data may be names or integer ids: a value equal to a name maps to that name's
index, else an integer 0 <= id < k is taken as the id itself. Without `data.label_names` the
names are the sorted unique labels of the train split (numerically sorted when all are
integers), so the mapping is fixed by the data, not by row order.

Rows are padded to one length for every split: the longest example rounded up to a multiple of
8, capped at `seq_len`, so short data runs fast without giving eval a second shape. Longer
examples are truncated by the tokenizer (longest-first for pairs) and counted.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math

import numpy as np

from jaxtune.data import config as data_config
from jaxtune.data.pipeline import Dataset, Splits
from jaxtune.data.readers import BadRows, DataError, Row
from jaxtune.data.rows import reason_kind

log = logging.getLogger(__name__)


class RowError(Exception):
  """A row-level problem; the caller passes it to BadRows with the row's origin."""


def encoded_rows(rows, encode, bad: BadRows, reasons: collections.Counter | None = None):
  """(row, encode(row)) for each row that encodes. A row whose `encode` raises RowError goes to
  `bad` (outside the except, so a DataError raised there does not chain the RowError), its reason
  counted by kind in `reasons` when given. The one bad-row loop of the classification, SFT and
  preference readers."""
  for r in rows:
    try:
      out = encode(r)
    except RowError as e:
      error = str(e)
    else:
      yield r, out
      continue
    if reasons is not None:
      reasons[reason_kind(error)] += 1
    bad(r.file, r.row, error, r.fields)


def text_field(fields: dict, column: str) -> str:
  if column not in fields:
    raise RowError(f"missing column {column!r} (row has {sorted(fields)})")
  value = fields[column]
  if value is None:
    raise RowError(f"column {column!r} is null, expected text")
  if not isinstance(value, str):
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise RowError(f"column {column!r} is not text: got {type(value).__name__} {shown}")
  if not value.strip():
    raise RowError(f"empty text in column {column!r}")
  return value


def label_key(value, column: str) -> int | str:
  """A label as an int id or a name; anything else is a bad row."""
  if value is None or isinstance(value, str) and not value.strip():
    raise RowError(f"missing label in column {column!r}")
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)  # parquet / pandas store integer labels with missing values as floats
  if isinstance(value, str):
    return value.strip()
  raise RowError(f"label in column {column!r} is neither a name nor an integer id: {value!r}")


def numeric_column(rows: list[Row], column: str, key: str, missing: float | None) -> np.ndarray:
  """[N] float32 value of `column` per row: a number >= 0 or a numeric string (CSV cells).

  A row without a value (absent, null, blank, NaN) takes `missing`; with `missing` None it is an
  error, as is a value that is not a number >= 0. Errors name the config key, the column and
  the rows (file and row number), so the data can be fixed.
  """
  values = np.zeros(len(rows), np.float32)
  absent, bad = [], []
  for i, r in enumerate(rows):
    v = r.fields.get(column)
    if isinstance(v, str) and v.strip():
      try:
        v = float(v)
      except ValueError:
        bad.append(r)
        continue
    if v is None or isinstance(v, str) or isinstance(v, float) and math.isnan(v):
      if missing is None:
        absent.append(r)
      values[i] = missing or 0.0
    elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
      bad.append(r)
    else:
      values[i] = v
  if rows and len(absent) == len(rows):
    raise DataError(f"data.{key}={column!r}: no row has a column {column!r} (columns: "
                    f"{', '.join(sorted(rows[0].fields))}); name a numeric column")
  if absent:
    raise DataError(f"data.{key}={column!r}: {len(absent)} rows have no value in column "
                    f"{column!r} ({_where(absent)}); fill them, or set data.missing_confidence "
                    "to the value such rows should take")
  if bad:
    shown = ", ".join(repr(r.fields.get(column)) for r in bad[:3])
    raise DataError(f"data.{key}={column!r}: {len(bad)} rows hold a value that is not a number "
                    f">= 0 in column {column!r} ({_where(bad)}: {shown})")
  return values


def _where(rows: list[Row], n: int = 5) -> str:
  """'FILE rows 3, 7 (and 12 more)' for the first n rows, file by file."""
  by_file: dict[str, list[int]] = {}
  for r in rows[:n]:
    by_file.setdefault(r.file, []).append(r.row)
  text = "; ".join(f"{f} rows {', '.join(map(str, rs))}" for f, rs in by_file.items())
  return text + (f" and {len(rows) - n} more" if len(rows) > n else "")


def _as_int(key) -> int | None:
  if isinstance(key, int):
    return key
  try:
    return int(key)
  except ValueError:
    return None


def infer_label_names(keys: list) -> tuple[str, ...]:
  unique = {str(k) for k in keys}
  if all(_as_int(k) is not None for k in unique):
    return tuple(sorted(unique, key=int))
  return tuple(sorted(unique))


def label_id(key, names: tuple[str, ...], index: dict[str, int], num_labels: int = 0) -> int:
  if str(key) in index:
    return index[str(key)]
  i = _as_int(key)
  if i is not None and 0 <= i < len(names):
    return i
  why = f"; model.num_labels={num_labels}" if num_labels else ""
  raise RowError(f"unknown label {key!r} (known: {', '.join(names)}; or an id 0-{len(names) - 1}{why})")


def fit_num_labels(names: tuple[str, ...], num_labels: int, source: str) -> tuple[str, ...]:
  """Inferred label names against a fixed `model.num_labels`. Integer labels become the ids
  0..num_labels-1 (a row whose id falls outside is then a bad row, named); named labels must
  number exactly num_labels. Without this a label past the model's head trains on garbage."""
  if not num_labels or len(names) == num_labels:
    return names
  if all(_as_int(n) is not None for n in names):
    return tuple(str(i) for i in range(num_labels))
  raise DataError(
    f"{source}: the train split has {len(names)} labels ({', '.join(names)}) but "
    f"model.num_labels={num_labels}: set model.num_labels={len(names)} (or 0 to take it from "
    "the data), or name the labels in data.label_names"
  )


def balanced_weights(labels: np.ndarray, names: tuple[str, ...]) -> tuple[float, ...]:
  """n / (k * count_c): every class carries the same total weight in the train loss."""
  counts = np.bincount(labels, minlength=len(names))
  empty = [names[c] for c in np.nonzero(counts == 0)[0]]
  if empty:
    raise DataError(
      f"data.class_weights='balanced': no training examples of label(s) {empty}, so their "
      "weight is undefined; give explicit weights or drop those labels from data.label_names"
    )
  return tuple(float(w) for w in len(labels) / (len(names) * counts))


def encode(tokenizer, texts: list[str], pairs: list[str] | None, seq_len: int) -> tuple[dict, int]:
  """Token lists per example, truncated to seq_len, and how many needed truncating."""
  kw = {"padding": False, "verbose": False}
  enc = dict(tokenizer(texts, pairs, truncation=False, **kw)) if texts else {"input_ids": []}
  over = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > seq_len]
  if over:
    # Re-encode only the long ones: truncating everything up front would hide which were cut.
    cut = tokenizer([texts[i] for i in over], [pairs[i] for i in over] if pairs else None,
                    truncation=True, max_length=seq_len, **kw)
    for key in enc:
      for j, i in enumerate(over):
        enc[key][i] = cut[key][j]
    worst = max(len(ids) for ids in cut["input_ids"])
    if worst > seq_len:
      raise DataError(f"data.seq_len={seq_len} is too short for the tokenizer's special tokens")
  return enc, len(over)


def pad(enc: dict, length: int, pad_id: int) -> dict[str, np.ndarray]:
  n = len(enc["input_ids"])
  out = {}
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    if key not in enc:
      continue
    fill = pad_id if key == "input_ids" else 0
    a = np.full((n, length), fill, np.int32)
    for i, ids in enumerate(enc[key]):
      a[i, : len(ids)] = ids
    out[key] = a
  if "attention_mask" not in out:
    out["attention_mask"] = (np.arange(length)[None] < np.array([len(x) for x in enc["input_ids"]])[:, None]).astype(np.int32)
  return out


def pad_token_id(tokenizer) -> int:
  for tid in (tokenizer.pad_token_id, getattr(tokenizer, "eos_token_id", None)):
    if tid is not None:
      return int(tid)
  return 0  # masked out by attention_mask either way


def pool_where_data_pads(model, config) -> None:
  """Point a decoder classifier's `pad_token_id` at the id the data is padded with.

  Decoders (Llama, Qwen, Gemma, GPT-2) score the last token that is not `pad_token_id`, as HF's
  `*ForSequenceClassification` does. Rows are padded right with `pad_token_id(tokenizer)` (the
  tokenizer's pad, else its EOS), so the model's id must be that one: a config without a pad id
  (SmolLM2's, Qwen's often) would make HF refuse batches of the export, and a config whose id
  differs from the tokenizer's would score a pad. The id is written to an export's config.json.
  """
  source = config.data.tokenizer or config.model.source
  if source.startswith("preset:") or not hasattr(model.config, "pad_token_id"):
    return  # synthetic rows: no tokenizer, the attention mask decides
  from jaxtune.data.tokenizer import load_tokenizer

  pad = pad_token_id(load_tokenizer(source))
  if model.config.pad_token_id != pad:
    if model.config.pad_token_id is not None:
      log.info("seq_cls: pad_token_id %s of the model config -> %d, the tokenizer's pad the data "
               "uses", model.config.pad_token_id, pad)
    model.config = dataclasses.replace(model.config, pad_token_id=pad)


def build(rows: dict[str, list[Row]], d, tokenizer, bad: BadRows, num_labels: int = 0):
  """Splits of classification arrays from rows per split (see `jaxtune.data.build`).

  The first split (train, or the only one when scoring a file) sets the inferred label names
  and the balanced class weights; `num_labels` > 0 (model.num_labels) fixes their number.
  """
  first = next(iter(rows))
  # Columns first, per split: label names are inferred from the train rows that survive.
  parsed: dict[str, list] = {}
  for split, split_rows in rows.items():
    def columns(r):  # checked in this order: the first bad column is the one reported
      text = text_field(r.fields, d.text_column)
      pair = text_field(r.fields, d.text_pair_column) if d.text_pair_column else None
      return text, pair, label_key(r.fields.get(d.label_column), d.label_column)

    parsed[split] = [(r, *cols) for r, cols in encoded_rows(split_rows, columns, bad)]

  names = data_config.parse_label_names(d.label_names)
  if not names:
    names = fit_num_labels(infer_label_names([p[3] for p in parsed[first]]), num_labels, d.source)
  if len(names) < 2:
    raise DataError(f"{d.source}: classification needs at least 2 labels, found {list(names)}")
  index = {n: i for i, n in enumerate(names)}

  encoded, labels, examples, stats, row_weights = {}, {}, {}, {}, {}
  for split, items in parsed.items():
    kept, ids = [], []
    for r, text, pair, key in items:
      try:
        ids.append(label_id(key, names, index, num_labels))
        kept.append((r, text, pair))
        continue
      except RowError as e:
        error = str(e)
      bad(r.file, r.row, error, r.fields)
    if not kept:
      raise DataError(f"{d.source}: the {split} split has no usable rows "
                      f"({len(rows[split])} read, all bad)")
    texts = [t for _, t, _ in kept]
    pairs = [p for _, _, p in kept] if d.text_pair_column else None
    if d.weight_column and split == "train":  # the train loss only; scores stay unweighted
      row_weights[split] = numeric_column([r for r, _, _ in kept], d.weight_column, "weight_column",
                                          data_config.parse_missing_confidence(d.missing_confidence))
    encoded[split], truncated = encode(tokenizer, texts, pairs, d.seq_len)
    labels[split] = np.asarray(ids, np.int32)
    examples[split] = [
      {"text": t, **({"text_pair": p} if p is not None else {}), "label": names[i], **r.origin()}
      for (r, t, p), i in zip(kept, ids)
    ]
    if truncated:
      log.warning("%s split: truncated %d of %d examples longer than data.seq_len=%d",
                  split, truncated, len(kept), d.seq_len)
    counts = collections.Counter(names[i] for i in ids)
    stats[split] = {"rows": len(rows[split]), "examples": len(kept),
                    "skipped": len(rows[split]) - len(kept), "truncated": truncated,
                    "label_counts": {n: counts.get(n, 0) for n in names}}

  longest = max(len(ids) for enc in encoded.values() for ids in enc["input_ids"])
  length = min(d.seq_len, -(-longest // 8) * 8)
  pad_id = pad_token_id(tokenizer)
  splits = {}
  for split, enc in encoded.items():
    arrays = pad(enc, length, pad_id)
    arrays["labels"] = labels[split]
    arrays["example_id"] = np.arange(len(labels[split]), dtype=np.int32)
    if split in row_weights:
      arrays["weight"] = row_weights[split]  # losses.example_weights multiplies it in
      stats[split]["weight_mean"] = round(float(row_weights[split].mean()), 4)
    splits[split] = Dataset(arrays)
    stats[split]["tokens"] = int(arrays["attention_mask"].sum())

  weights = data_config.parse_class_weights(d.class_weights, len(names))
  if weights == "balanced":
    weights = balanced_weights(labels[first], names)
  return Splits(splits, num_labels=len(names), label_names=tuple(names), class_weights=weights,
                examples=examples, stats={"row_length": length, "splits": stats})
