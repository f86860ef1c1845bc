"""The cleaned data set and every row it drops, with the reason: what `jaxtune data clean` writes.

Steps, per split in this order: unusable rows out (missing or empty text, missing label, text
that is only markup); text normalised (`text.normalize`) and label normalised
(`records.normalize_label`); exact, then near duplicates out (keep the first); then, in train
only, rows that also occur (exactly or nearly) in validation or test, and (asked for) label
errors; then the optional length
and language filters. Rows the reader could not parse at all are listed too (with split ''),
so `dropped.jsonl` plus the kept rows account for every row of the input.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

from jaxtune.data import readers
from jaxtune.data.quality import audit as qaudit
from jaxtune.data.quality import dedup, records
from jaxtune.data.quality import text as qtext


@dataclasses.dataclass
class Settings:
  normalize: bool = True  # write the normalised text (checks always compare normalised text)
  near: dedup.NearParams = dedup.NearParams()
  drop_leaks: bool = True
  min_tokens: int = 0  # 0 = no lower bound (tokens of the tokenizer, else words)
  max_tokens: int = 0  # 0 = no upper bound
  lang: str = ""  # '' = keep every language; else drop rows confidently in another one
  # Train rows to drop as label errors, (file, row) -> reason (`jaxtune data clean
  # --drop_label_errors` finds them with quality.label_errors on the train rows as read).
  label_errors: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Result:
  kept: dict[str, list[dict]]  # split -> cleaned rows (all original columns)
  dropped: list[dict]  # {split, file, row, reason, step, content[, of]}
  summary: dict


def _drop(split: str, where: dict, step: str, reason: str, content, **extra) -> dict:
  return {"split": split, **where, "step": step, "reason": reason, "content": content, **extra}


def clean(splits: dict[str, list[readers.Row]], d, tokenizer=None, settings: Settings | None = None,
          unreadable: list[dict] = ()) -> Result:
  settings = settings or Settings()
  dropped = [_drop("", {"file": r["file"], "row": r["row"]}, "unreadable", r["reason"], r["content"])
             for r in unreadable]
  changed = collections.defaultdict(collections.Counter)
  kept: dict[str, list[records.Example]] = {}
  for name, rows in splits.items():
    examples, invalid = records.parse(rows, d.text_column, d.text_pair_column, d.label_column)
    dropped += [_drop(name, {"file": r["file"], "row": r["row"]}, "invalid", r["reason"], r["content"])
                for r in invalid]
    for ex in examples:
      for problem, check in (("mojibake", qtext.has_mojibake), ("control_chars", qtext.has_control),
                             ("html", qtext.has_html)):
        changed[name][problem] += check(ex.joined)
      changed[name]["text_changed"] += ex.cleaned != ex.joined
    matches = dedup.duplicates([ex.cleaned for ex in examples], settings.near)
    gone = set()
    for m in matches:
      ex, of = examples[m.index], examples[m.of]
      why = f"{m.kind} duplicate of row {of.row.row}" + (f" (Jaccard {m.jaccard:.3f})" if m.kind == "near" else "")
      dropped.append(_drop(name, ex.where(), f"{m.kind}_duplicate", why, ex.row.fields, of=of.where()))
      gone.add(m.index)
    kept[name] = [ex for i, ex in enumerate(examples) if i not in gone]

  if settings.drop_leaks and "train" in kept:
    train = kept["train"]
    leaked: dict[int, tuple[str, records.Example, dedup.Match]] = {}
    for name, examples in kept.items():
      if name == "train":
        continue
      for m in dedup.leaks([ex.cleaned for ex in train], [ex.cleaned for ex in examples], settings.near):
        leaked.setdefault(m.of, (name, examples[m.index], m))
    for i, (name, other, m) in sorted(leaked.items()):
      ex = train[i]
      why = f"{m.kind} copy of {name} row {other.row.row}" + (f" (Jaccard {m.jaccard:.3f})" if m.kind == "near" else "")
      dropped.append(_drop("train", ex.where(), "leak", why, ex.row.fields, of=other.where()))
    kept["train"] = [ex for i, ex in enumerate(train) if i not in leaked]

  if settings.label_errors and "train" in kept:  # train only: scores stay comparable
    keep = []
    for ex in kept["train"]:
      why = settings.label_errors.get((ex.row.file, ex.row.row))
      if why:
        dropped.append(_drop("train", ex.where(), "label_error", why, ex.row.fields))
      else:
        keep.append(ex)
    kept["train"] = keep

  for name, examples in kept.items():
    kept[name] = _filters(name, examples, d, tokenizer, settings, dropped)

  out = {name: [_row(ex, d, settings) for ex in examples] for name, examples in kept.items()}
  steps = collections.Counter((r["split"], r["step"]) for r in dropped)
  summary = {
    "source": d.source,
    "splits": {name: {"rows": len(splits[name]), "kept": len(out[name]),
                      "dropped": {step: n for (s, step), n in sorted(steps.items()) if s == name},
                      "repaired": dict(changed[name])} for name in splits},
    "unreadable": len(unreadable),
    "settings": {"normalize": settings.normalize, "near_threshold": settings.near.threshold,
                 "drop_leaks": settings.drop_leaks, "min_tokens": settings.min_tokens,
                 "max_tokens": settings.max_tokens, "lang": settings.lang,
                 "label_errors_dropped": len(settings.label_errors)},
  }
  return Result(out, dropped, summary)


def _filters(name, examples, d, tokenizer, settings: Settings, dropped: list) -> list[records.Example]:
  lengths = None
  if settings.min_tokens or settings.max_tokens:
    use = (lambda ex: ex.clean_text, lambda ex: ex.clean_pair) if settings.normalize else (
      lambda ex: ex.text, lambda ex: ex.pair)
    lengths = qaudit.token_lengths([use[0](ex) for ex in examples],
                                   [use[1](ex) for ex in examples] if d.text_pair_column else None, tokenizer)
  lang = qtext.LanguageCheck(settings.lang) if settings.lang else None
  unit = "tokens" if tokenizer is not None else "words"
  keep = []
  for i, ex in enumerate(examples):
    why, step = None, None
    if lengths is not None and settings.min_tokens and lengths[i] < settings.min_tokens:
      why, step = f"too short: {lengths[i]} {unit} < min {settings.min_tokens}", "length"
    elif lengths is not None and settings.max_tokens and lengths[i] > settings.max_tokens:
      why, step = f"too long: {lengths[i]} {unit} > max {settings.max_tokens}", "length"
    elif lang is not None and (code := lang.other_language(ex.joined)):
      why, step = f"language {code!r}, not {settings.lang!r}", "language"
    if why:
      dropped.append(_drop(name, ex.where(), step, why, ex.row.fields))
    else:
      keep.append(ex)
  return keep


def _row(ex: records.Example, d, settings: Settings) -> dict:
  fields = dict(ex.row.fields)
  if settings.normalize:
    fields[d.text_column] = ex.clean_text
    if ex.pair is not None:
      fields[d.text_pair_column] = ex.clean_pair
  if d.label_column and ex.label is not None:
    fields[d.label_column] = ex.label
  return fields


def write(result: Result, out) -> dict[str, Path]:
  """out/<split>.jsonl per split, out/dropped.jsonl and out/clean.json; returns the split files.

  `out` is a folder path or a checked `jaxtune.outputs.Folder` (the CLI's, built before the
  work); either way no file jaxtune did not write is replaced."""
  from jaxtune import outputs

  if not isinstance(out, outputs.Folder):
    out = outputs.Folder(out, command="jaxtune data clean", flag="--out")
  files = {}
  for name, rows in result.kept.items():
    files[name] = Path(out.path(f"{name}.jsonl"))
    _write_jsonl(files[name], rows)
  _write_jsonl(Path(out.path("dropped.jsonl")), result.dropped)
  out.path("clean.json").write_text(json.dumps({**result.summary, "files": {k: str(v) for k, v in files.items()}},
                                               indent=2, ensure_ascii=False) + "\n")
  out.commit()
  return files


def _write_jsonl(path: Path, rows: list[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
