"""The `data` section of the run config: where examples come from and how they become arrays.

Every field has a real default ('' or 0 = off) because absl cannot override a field whose
default is None. `check` validates the values that types alone do not catch, naming the key;
the parse helpers turn the comma-separated strings into Python values in one place.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from jaxtune.data.readers import FILE_FORMATS
from jaxtune.errors import ConfigError, DataError

KINDS = ("synthetic", "classification", "sft", "preference", "prompts")  # prompts: GRPO
SFT_FORMATS = ("auto", "prompt_completion", "chat", "text")
ON_BAD_ROW = ("error", "skip")
SPLIT_NAMES = ("train", "validation", "test")
DEDUP = ("", "exact", "near")
BALANCE = ("", "oversample", "undersample", "class_weights")
LABEL_ERRORS = ("", "drop", "relabel")
AUGMENT_OPS = ("synonym", "insert", "swap", "delete", "backtranslate")


def default_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "synthetic"  # synthetic | classification | sft | preference
  c.seq_len = 64  # tokens per row; classification rows may be shorter (longest example, /8)
  # kind='synthetic' only: generated rows for the tiny recipe.
  c.train_rows = 2048
  c.eval_rows = 128

  # A local .jsonl/.json/.csv/.tsv/.parquet/.txt file, a builtin ('rotten_tomatoes',
  # 'chitchat'), or a `datasets` hub name ('name' or 'name:split'; needs the internet).
  c.source = ""
  c.validation_source = ""  # '' = carve from source with `split`
  c.test_source = ""  # '' = carve from source with `split` (a 0 fraction = no test split)
  # train,validation[,test] fractions of `source`; a split with its own source takes nothing
  # from `source` (train gets the rest). Seeded, so the same data always splits the same way.
  c.split = "0.8,0.1,0.1"
  c.split_seed = 0
  c.max_rows = 0  # > 0: a seeded subset of at most this many rows per split (quick runs)
  # > 0: a seeded subset of at most this many TRAIN rows, drawn before any data-quality step and
  # seeded by split_seed (not the run seed), so every variant and seed trains on the same rows;
  # validation and test stay whole (shorter runs that are still scored on the full splits).
  c.max_train_rows = 0
  # > 0: a seeded subset of at most this many of the train rows the data-quality steps KEPT (the
  # same draw as max_train_rows when nothing was dropped): a fixed training budget spent on the
  # best rows of a large scraped pool instead of on a random draw of them.
  c.max_kept_train_rows = 0
  c.on_bad_row = "error"  # error | skip (skipped rows go to workdir/skipped_rows.jsonl)

  # Column mapping.
  c.text_column = "text"
  c.text_pair_column = ""  # classification of sentence pairs (e.g. NLI)
  c.label_column = "label"
  c.prompt_column = "prompt"
  c.completion_column = "completion"
  c.messages_column = "messages"
  # Preference pairs (kind='preference', jaxtune/data/preference.py): prompt_column plus these.
  c.chosen_column = "chosen"
  c.rejected_column = "rejected"

  # Classification.
  c.label_names = ""  # comma-separated; '' = sorted unique labels of the train split
  c.class_weights = ""  # '' | 'balanced' | comma-separated floats, one per label

  # SFT.
  c.sft_format = "auto"  # auto | prompt_completion | chat | text
  c.completion_only = True  # loss only on completions / assistant turns
  c.pack = False  # several documents per row, kept apart by segment_ids and positions
  c.system_prompt = ""  # chat: prepended as a system message when a conversation has none

  c.tokenizer = ""  # '' = the model's source

  # Data quality, on the train split only (classification; see jaxtune/data/quality). Rows
  # these drop go to workdir/dropped_rows.jsonl with the reason.
  c.clean = False  # train text normalised (mojibake, NFKC, HTML, controls, spaces); label spelling fixed
  c.dedup = ""  # '' | 'exact' | 'near': drop duplicates and rows also in validation/test
  c.dedup_threshold = 0.8  # 'near': Jaccard of character 5-gram sets
  c.balance = ""  # '' | 'oversample' | 'undersample' | 'class_weights'
  # Comma-separated ops: synonym (WordNet), insert, swap, delete, backtranslate.
  c.augment = ""
  c.augment_rate = 0.1  # share of a text's words each word op changes
  c.augment_copies = 1  # augmented rows added per train row
  c.augment_translator = ""  # 'module:function', list[str] -> list[str], for backtranslate

  # Per-row confidence (classification, train split only; validation and test stay as read).
  c.weight_column = ""  # '' = off; a numeric column (e.g. 'confidence') weighting each row's loss
  c.confidence_column = "confidence"  # the numeric column data.min_confidence reads
  c.min_confidence = 0.0  # > 0: drop train rows whose confidence is below it
  # '' = a row without a numeric value in those columns is an error (rows named); a number:
  # the value such rows take (e.g. '1' trusts them fully, '0' drops/mutes them).
  c.missing_confidence = ""
  # Label errors (confident learning, jaxtune/data/quality/label_errors.py; needs the `quality`
  # extra): '' | 'drop' | 'relabel' (to the suggested label) the train rows whose label an
  # out-of-fold model on frozen encoder embeddings confidently contradicts.
  c.label_errors = ""
  c.label_error_folds = 5  # folds of the out-of-fold model (each row scored by a model not fitted on it)
  c.label_error_encoder = ""  # '' = the offline all-MiniLM-L6-v2 (jaxtune.data.assets)
  return c


def _fail(key: str, value, why: str):
  raise ConfigError(f"config: data.{key}={value!r}: {why}")


def check(c: ml_collections.ConfigDict) -> None:
  """Check the data section; errors name the key."""
  if c.kind not in KINDS:
    _fail("kind", c.kind, f"expected one of {KINDS}")
  if c.seq_len < 2:
    _fail("seq_len", c.seq_len, "must be at least 2")
  check_quality(c)
  if c.kind == "synthetic":
    return
  if not c.source:
    _fail("source", c.source, f"kind={c.kind!r} needs a file, builtin or hub data set")
  if c.on_bad_row not in ON_BAD_ROW:
    _fail("on_bad_row", c.on_bad_row, f"expected one of {ON_BAD_ROW}")
  if c.sft_format not in SFT_FORMATS:
    _fail("sft_format", c.sft_format, f"expected one of {SFT_FORMATS}")
  if c.max_rows < 0:
    _fail("max_rows", c.max_rows, "must be >= 0 (0 = all rows)")
  if c.kind == "preference":
    cols = {k: c[k] for k in ("prompt_column", "chosen_column", "rejected_column")}
    for key, value in cols.items():
      if not value:
        _fail(key, value, "kind='preference' needs the column's name")
    if len(set(cols.values())) < 3:
      _fail("chosen_column", c.chosen_column,
            f"prompt, chosen and rejected columns must differ (have {cols})")
  for key in ("max_train_rows", "max_kept_train_rows"):
    if c[key] < 0:
      _fail(key, c[key], "must be >= 0 (0 = all train rows)")
  fr = split_fractions(c.split)
  if fr["validation"] == 0 and not c.validation_source:
    _fail("split", c.split, "no validation split: give it a fraction or set data.validation_source")
  parse_class_weights(c.class_weights, None)


def check_files(c: ml_collections.ConfigDict) -> None:
  """data.source / data.validation_source naming a local data file that is not there: refused
  before anything runs (readers.read says the same, only later). Builtin and hub data sets, and
  remote paths, are checked when they are read."""
  if c.kind == "synthetic":
    return
  for key in ("source", "validation_source"):
    value = c[key]
    path = Path(value).expanduser()
    if value and "://" not in value and path.suffix.lower() in FILE_FORMATS and not path.is_file():
      raise DataError(f"config: data.{key}={value!r}: no such file; give the path of a "
                      f"{'/'.join(FILE_FORMATS)} file, a builtin:NAME or a hub data set")


def check_quality(c: ml_collections.ConfigDict) -> None:
  """The data.clean/dedup/balance/augment and confidence keys (train-split transforms)."""
  if c.dedup not in DEDUP:
    _fail("dedup", c.dedup, f"expected one of {DEDUP}")
  if c.dedup == "near" and not 0 < c.dedup_threshold < 1:
    _fail("dedup_threshold", c.dedup_threshold, "expected a Jaccard similarity in (0, 1)")
  if c.balance not in BALANCE:
    _fail("balance", c.balance, f"expected one of {BALANCE}")
  if c.balance == "class_weights" and c.class_weights.strip():
    _fail("balance", c.balance, f"data.class_weights={c.class_weights!r} is set too; use one of them")
  ops = parse_augment(c.augment)
  if ops and not 0 < c.augment_rate <= 1:
    _fail("augment_rate", c.augment_rate, "expected a share of words in (0, 1]")
  if ops and c.augment_copies < 1:
    _fail("augment_copies", c.augment_copies, "expected at least 1 augmented row per train row")
  if "backtranslate" in ops and not c.augment_translator:
    _fail("augment", c.augment, "'backtranslate' needs data.augment_translator='module:function'")
  if c.min_confidence < 0:
    _fail("min_confidence", c.min_confidence, "expected a threshold >= 0 (0 = off)")
  if c.min_confidence and not c.confidence_column:
    _fail("confidence_column", c.confidence_column, "data.min_confidence needs the column to read")
  parse_missing_confidence(c.missing_confidence)
  if c.label_errors not in LABEL_ERRORS:
    _fail("label_errors", c.label_errors, f"expected one of {LABEL_ERRORS}")
  if c.label_errors and c.label_error_folds < 2:
    _fail("label_error_folds", c.label_error_folds, "expected at least 2 folds")
  used = [k for k in ("clean", "dedup", "balance", "augment", "weight_column", "min_confidence",
                      "label_errors") if c[k]]
  if used and c.kind != "classification":
    _fail(used[0], c[used[0]], f"data quality transforms support kind='classification', not {c.kind!r}")


def parse_missing_confidence(text: str) -> float | None:
  """'' -> None (a missing value is an error); '0.5' -> 0.5."""
  if not str(text).strip():
    return None
  try:
    value = float(text)
  except ValueError:
    _fail("missing_confidence", text, "expected '' (missing values are errors) or a number >= 0")
  if not value >= 0 or value == float("inf"):
    _fail("missing_confidence", text, "expected '' (missing values are errors) or a number >= 0")
  return value


def parse_augment(text: str) -> tuple[str, ...]:
  """'synonym,swap' -> ('synonym', 'swap'); '' -> ()."""
  ops = tuple(o.strip() for o in text.split(",")) if text.strip() else ()
  bad = [o for o in ops if o not in AUGMENT_OPS]
  if bad or len(set(ops)) != len(ops):
    _fail("augment", text, f"expected distinct comma-separated ops from {AUGMENT_OPS}")
  return ops


def split_fractions(text: str) -> dict[str, float]:
  """'0.8,0.1,0.1' -> {'train': 0.8, 'validation': 0.1, 'test': 0.1}; must sum to 1."""
  try:
    vals = [float(x) for x in text.split(",")]
  except ValueError:
    _fail("split", text, "expected comma-separated fractions train,validation[,test]")
  if len(vals) not in (2, 3) or any(v < 0 for v in vals) or abs(sum(vals) - 1) > 1e-6:
    _fail("split", text, "expected 2 or 3 non-negative fractions (train,validation[,test]) summing to 1")
  vals += [0.0] * (3 - len(vals))
  return dict(zip(SPLIT_NAMES, vals))


def parse_label_names(text: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in text.split(",")) if text.strip() else ()
  if any(not n for n in names) or len(set(names)) != len(names):
    _fail("label_names", text, "expected distinct, non-empty comma-separated names")
  return names


def parse_class_weights(text: str, num_labels: int | None) -> str | tuple[float, ...] | None:
  """None (off), 'balanced', or one float per label (checked once `num_labels` is known)."""
  text = text.strip()
  if not text:
    return None
  if text == "balanced":
    return text
  try:
    weights = tuple(float(x) for x in text.split(","))
  except ValueError:
    _fail("class_weights", text, "expected '', 'balanced' or comma-separated floats")
  if any(w < 0 for w in weights):
    _fail("class_weights", text, "weights must be non-negative")
  if num_labels is not None and len(weights) != num_labels:
    _fail("class_weights", text, f"{len(weights)} weights for {num_labels} labels")
  return weights
