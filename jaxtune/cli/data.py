"""`jaxtune data audit|clean --data=FILE_OR_NAME --out=DIR [--config=configs/<recipe>.py]`.

audit: writes DIR/audit.json (every figure), DIR/audit.md and DIR/audit.html (with plots):
per split, invalid rows, token lengths and truncation, exact and near duplicates, leaks into
train, label balance and the tokens most predictive of each label, encoding problems.

clean: writes DIR/<split>.jsonl (cleaned rows), DIR/dropped.jsonl (every removed row and
why) and DIR/clean.json (counts). Train on the result with --config.data.source=DIR/train.jsonl
--config.data.validation_source=DIR/validation.jsonl --config.data.test_source=DIR/test.jsonl.

With --config, the data set, splits, columns, tokenizer and seq_len are the training run's
(flags given explicitly override them); without it, flags name the columns and tokenizer.

--label_errors (audit) / --drop_label_errors (clean): confident learning on the train split
(`jaxtune.data.quality.label_errors`), listed in DIR/label_errors.jsonl; embeddings cached in
DIR/label_error_embeddings.npz.

DIR must be new, empty, or an earlier output of the same command (listed in its
.jaxtune-outputs.json); --overwrite writes among other files, but never over the input data.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from jaxtune.cli import run_app
from jaxtune.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Optional run recipe (configs/<recipe>.py[:variant]): its data section decides "
  "splits, columns, tokenizer and seq_len.", lock_config=True)
_DATA = flags.DEFINE_string("data", "", "File (.jsonl/.json/.csv/.tsv/.parquet/.txt), builtin or hub name; "
                            "default: the config's data.source.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_TEXT = flags.DEFINE_string("text_column", "text", "Text column.")
_PAIR = flags.DEFINE_string("text_pair_column", "", "Second text column of sentence pairs.")
_LABEL = flags.DEFINE_string("label_column", "label", "Label column ('' = unlabelled data).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "HF tokenizer dir, .gguf or hub id for token lengths "
                                 "(default: the config's; none = lengths in words).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Max length whose truncation share is reported (default: the config's).")
_SPLIT = flags.DEFINE_string("split", "0.8,0.1,0.1", "train,validation[,test] fractions carved from --data.")
_SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "Seed of the split.")
_VAL = flags.DEFINE_string("validation_data", "", "Own validation file (instead of a fraction of --data).")
_TEST = flags.DEFINE_string("test_data", "", "Own test file (instead of a fraction of --data).")
_MAX_ROWS = flags.DEFINE_integer("max_rows", 0, "Seeded subset of at most this many rows per split (0 = all).")
_NEAR = flags.DEFINE_float("near_threshold", 0.8, "Jaccard similarity (character 5-grams) for near "
                           "duplicates and near leaks; 0 = exact only.")
_NUM_PERM = flags.DEFINE_integer("num_perm", 128, "MinHash hash functions.")
_NGRAM = flags.DEFINE_integer("ngram", 5, "Character n-gram size of the shingles.")
_LANG = flags.DEFINE_string("lang", "en", "audit: target language (ISO 639-1) for the other-language "
                            "check ('' = off); clean: drop rows confidently in another language.")
_EXAMPLES = flags.DEFINE_integer("examples", 5, "audit: example rows/pairs listed per finding.")
_TOP_TOKENS = flags.DEFINE_integer("top_tokens", 10, "audit: predictive tokens listed per label.")
_MIN_TOKEN_ROWS = flags.DEFINE_integer("min_token_rows", 5, "audit: rows a token needs to be listed as predictive.")
_NORMALIZE = flags.DEFINE_bool("normalize", True, "clean: write normalised text (mojibake, NFKC, HTML, "
                               "control chars, spaces).")
_DROP_LEAKS = flags.DEFINE_bool("drop_leaks", True, "clean: drop train rows that occur in validation/test.")
_MIN_TOKENS = flags.DEFINE_integer("min_tokens", 0, "clean: drop rows shorter than this (tokens, or words without a tokenizer).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 0, "clean: drop rows longer than this (0 = no limit).")
_LABEL_ERRORS = flags.DEFINE_bool("label_errors", False, "audit: find train rows whose label an "
                                  "out-of-fold model on frozen encoder embeddings confidently "
                                  "contradicts (cleanlab); lists them in label_errors.jsonl.")
_DROP_LABEL_ERRORS = flags.DEFINE_bool("drop_label_errors", False, "clean: drop those train rows.")
_FOLDS = flags.DEFINE_integer("label_error_folds", 5, "Folds of the out-of-fold label-error model.")
_ENCODER = flags.DEFINE_string("encoder", "", "HF encoder dir whose mean-pooled embeddings the "
                               "label-error model reads ('' = the offline all-MiniLM-L6-v2).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Write into --out even if it holds files jaxtune did not write.")
flags.mark_flags_as_required(["out"])

_COMMANDS = ("audit", "clean")


def data_config():
  """(data config, tokenizer source, seq_len) from --config and the flags given explicitly."""
  import ml_collections

  from jaxtune import data as data_lib
  from jaxtune.data import config as data_cfg

  f = flags.FLAGS
  config = _CONFIG.value
  if config is not None:
    d = ml_collections.ConfigDict(config.data.to_dict())
    tokenizer, seq_len = d.tokenizer or config.model.source, d.seq_len
    overrides = {k: v for k, v in _override_keys().items() if f[k].present}
  else:
    d = data_cfg.default_data_config()
    d.kind = "classification"
    tokenizer, seq_len = "", 0
    overrides = _override_keys()
  for flag_name, key in overrides.items():
    d[key] = f[flag_name].value
  if f["tokenizer"].present or config is None:
    tokenizer = _TOKENIZER.value
  if f["seq_len"].present or config is None:
    seq_len = _SEQ_LEN.value
  if not d.source:
    raise ConfigError("--data: no data set given (and no --config with data.source); pass "
                      "--data=FILE_OR_NAME")
  if d.kind != "classification":
    raise ConfigError(f"config: data.kind={d.kind!r}: `jaxtune data` audits text classification "
                      "data only")
  d = data_lib._with_builtin_defaults(d)
  data_cfg.split_fractions(d.split)
  return d, tokenizer, seq_len


def output_folder(command: str, d):
  """--out, checked before the work (`jaxtune.outputs`): never over the data files read."""
  from jaxtune import outputs

  # label_errors.jsonl lists flagged rows; label_error_embeddings.npz caches the encoder's
  # features beside the output (never beside the input), reused by a rerun into the same --out.
  found = ("label_errors.jsonl", "label_error_embeddings.npz")
  names = {"audit": ("audit.json", "audit.md", "audit.html", *found),
           "clean": ("train.jsonl", "validation.jsonl", "test.jsonl", "dropped.jsonl", "clean.json",
                     *found)}
  inputs = [d.source, d.validation_source, d.test_source]
  return outputs.Folder(_OUT.value, command=f"jaxtune data {command}", flag="--out",
                        overwrite=_OVERWRITE.value, inputs=[p for p in inputs if p],
                        expected=names[command])


def _override_keys() -> dict[str, str]:
  return {"data": "source", "text_column": "text_column", "text_pair_column": "text_pair_column",
          "label_column": "label_column", "split": "split", "split_seed": "split_seed",
          "validation_data": "validation_source", "test_data": "test_source", "max_rows": "max_rows"}


def main(argv):
  commands = list(argv[1:])
  if len(commands) != 1 or commands[0] not in _COMMANDS:
    raise ConfigError(f"expected one command, audit or clean, got {commands or 'none'}: "
                      "jaxtune data audit|clean --data=FILE_OR_NAME --out=DIR [flags]")
  from jaxtune.data import load_tokenizer
  from jaxtune.data.quality import audit, clean, dedup, report

  d, tok_source, seq_len = data_config()
  out = output_folder(commands[0], d)
  tokenizer = load_tokenizer(tok_source) if tok_source else None
  near = dedup.NearParams(threshold=_NEAR.value, num_perm=_NUM_PERM.value, ngram=_NGRAM.value)
  rows, unreadable = audit.read(d)
  flagged = None
  if _LABEL_ERRORS.value if commands[0] == "audit" else _DROP_LABEL_ERRORS.value:
    flagged = _label_errors(rows, d, out)
  if commands[0] == "audit":
    settings = audit.Settings(near=near, seq_len=seq_len, lang=_LANG.value, top_tokens=_TOP_TOKENS.value,
                              min_token_rows=_MIN_TOKEN_ROWS.value, examples=_EXAMPLES.value)
    result = audit.audit(rows, d, tokenizer, settings, unreadable)
    if flagged is not None:
      result["label_errors"] = {**flagged[0], "examples": flagged[1][: 4 * _EXAMPLES.value]}
    paths = report.write(result, out)
    print("\n".join(dict(report.sections(result))["Summary"]))
    print(f"wrote {paths['md']}, {paths['html']}, {paths['json']}")
  else:
    lang = _LANG.value if flags.FLAGS["lang"].present else ""
    errors = {} if flagged is None else {
      (r["file"], r["row"]): f"label {r['given']!r} contradicted: {r['suggested']!r} at "
      f"{r['confidence']:.2f} (out of fold)" for r in flagged[1]}
    settings = clean.Settings(normalize=_NORMALIZE.value, near=near, drop_leaks=_DROP_LEAKS.value,
                              min_tokens=_MIN_TOKENS.value, max_tokens=_MAX_TOKENS.value, lang=lang,
                              label_errors=errors)
    result = clean.clean(rows, d, tokenizer, settings, unreadable)
    files = clean.write(result, out)
    print(json.dumps(result.summary["splits"], indent=1))
    print(f"kept rows: {', '.join(f'{k}: {v}' for k, v in files.items())}; "
          f"dropped {len(result.dropped)} rows: {_OUT.value}/dropped.jsonl")


def _label_errors(rows, d, out) -> tuple[dict, list[dict]]:
  """(summary, flagged rows) of the train split; the rows also go to label_errors.jsonl."""
  from jaxtune.data.quality import label_errors

  settings = label_errors.Settings(folds=_FOLDS.value, encoder=_ENCODER.value, seq_len=d.seq_len,
                                   seed=d.split_seed)
  result, names, scored = label_errors.detect(rows["train"], d, settings,
                                              str(out.path("label_error_embeddings.npz")))
  found = label_errors.listing(result, names, rows["train"], scored, d)
  with open(out.path("label_errors.jsonl"), "w", encoding="utf-8") as f:
    for r in found:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  summary = {"split": "train", "encoder": _ENCODER.value or "all-MiniLM-L6-v2 (offline)",
             "folds": _FOLDS.value, **result.summary(names)}
  print(f"label errors: {summary['flagged']} of {summary['rows']} train rows flagged "
        f"({summary['share']:.1%}; out-of-fold accuracy {summary['oof_accuracy']:.3f}): "
        f"{_OUT.value}/label_errors.jsonl")
  return summary, found


def run(argv):
  run_app(__name__, main, argv, positional=True)
