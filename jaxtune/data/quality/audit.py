"""Every figure about a data set's splits: what `jaxtune data audit` writes to audit.json.

Per split: rows, invalid rows with reasons, token lengths and the share seq_len would truncate,
exact and near duplicates with example pairs, leaks into train (validation/test), label counts
and imbalance, the tokens most predictive of each label, and encoding problems. Duplicates and
leaks are found on the cleaned text and counted the way `clean` removes them (keep the first;
leaks among the rows left after deduplication), so an audit says exactly what a clean drops.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from jaxtune.data import readers
from jaxtune.data.quality import dedup, records
from jaxtune.data.quality import text as qtext

SNIPPET = 160  # characters of a text shown in examples


@dataclasses.dataclass
class Settings:
  near: dedup.NearParams = dedup.NearParams()
  seq_len: int = 0  # 0: no truncation figure
  lang: str = "en"  # '' = no language check
  top_tokens: int = 10  # predictive tokens listed per label
  min_token_rows: int = 5  # a token must occur in this many rows to be listed
  examples: int = 5  # example rows / pairs listed per finding


def read(d) -> tuple[dict[str, list[readers.Row]], list[dict]]:
  """Rows per split exactly as a training run with data config `d` splits them, plus unreadable rows."""
  from jaxtune.data import read_splits

  bad = readers.BadRows("skip")
  return read_splits(d, bad), bad.skipped


def snippet(text: str) -> str:
  return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def token_lengths(texts: list[str], pairs: list[str] | None, tokenizer) -> np.ndarray:
  """Tokens per example as training encodes them (special tokens included), or words."""
  if tokenizer is None:
    return np.array([len(t.split()) + (len(p.split()) if pairs else 0)
                     for t, p in zip(texts, pairs or texts)], np.int64)
  if not texts:
    return np.zeros(0, np.int64)
  enc = tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)
  return np.array([len(ids) for ids in enc["input_ids"]], np.int64)


def length_stats(lengths: np.ndarray, seq_len: int, unit: str) -> dict:
  if len(lengths) == 0:
    return {"unit": unit}
  top = int(lengths.max())
  width = -(-(top + 1) // 40)  # at most 40 bins of equal integer width
  edges = np.arange(0, top + width + 1, width)
  counts, _ = np.histogram(lengths, edges)
  out = {"unit": unit, "min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
         **{f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)}, "max": top,
         "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
  if seq_len:
    over = int((lengths > seq_len).sum())
    out.update(seq_len=seq_len, truncated=over, truncated_share=round(over / len(lengths), 4))
  return out


def encoding_problems(examples: list[records.Example], settings: Settings) -> dict:
  checks = {"mojibake": qtext.has_mojibake, "control_chars": qtext.has_control,
            "html": qtext.has_html, "urls": qtext.has_url}
  found = {name: [] for name in checks}
  for ex in examples:
    for name, check in checks.items():
      if check(ex.joined):
        found[name].append(ex)
  out = {name: _listing(found[name], settings.examples) for name in checks}
  if settings.lang:
    lang = qtext.LanguageCheck(settings.lang)
    other = [(ex, lang.other_language(ex.joined)) for ex in examples]
    other = [(ex, code) for ex, code in other if code]
    out["other_language"] = {
      **_listing([ex for ex, _ in other], settings.examples), "target": settings.lang,
      "languages": dict(collections.Counter(code for _, code in other).most_common()),
    }
  return out


def _listing(found: list[records.Example], n: int) -> dict:
  return {"count": len(found),
          "examples": [{**ex.where(), "text": snippet(ex.joined)} for ex in found[:n]]}


def duplicate_stats(examples: list[records.Example], cleaned: list[str], settings: Settings
                    ) -> tuple[dict, list[int]]:
  """(figures, indices of the rows kept after deduplication)."""
  matches = dedup.duplicates(cleaned, settings.near)
  by_kind = collections.Counter(m.kind for m in matches)
  conflicting = sum(1 for m in matches if examples[m.index].label != examples[m.of].label)
  dropped = {m.index for m in matches}
  stats = {
    "exact": by_kind["exact"], "near": by_kind["near"], "conflicting_labels": conflicting,
    "near_threshold": settings.near.threshold if settings.near.enabled else None,
    "examples": [_pair(examples[m.index], examples[m.of], m) for m in
                 _spread(matches, settings.examples)],
  }
  return stats, [i for i in range(len(examples)) if i not in dropped]


def _spread(matches: list[dedup.Match], n: int) -> list[dedup.Match]:
  """Up to n examples, near ones first (exact copies explain themselves)."""
  return sorted(matches, key=lambda m: (m.kind != "near", m.index))[:n]


def _pair(ex: records.Example, of: records.Example, m: dedup.Match) -> dict:
  return {"kind": m.kind, "jaccard": round(m.jaccard, 4), "row": ex.where(), "of_row": of.where(),
          "text": snippet(ex.joined), "of_text": snippet(of.joined),
          **({"labels": [ex.label, of.label]} if ex.label != of.label else {})}


def label_stats(examples: list[records.Example], settings: Settings) -> dict:
  counts = collections.Counter(ex.label for ex in examples)
  if not counts:
    return {}
  sizes = sorted(counts.values())
  rows_with = collections.Counter()  # token -> rows
  rows_with_label = collections.Counter()  # (token, label) -> rows
  for ex in examples:
    for tok in set(qtext.words(ex.cleaned)):
      rows_with[tok] += 1
      rows_with_label[tok, ex.label] += 1
  n = len(examples)
  predictive = {}
  for label, count in sorted(counts.items()):
    prior = count / n
    scored = []
    for tok, k in rows_with.items():
      if k >= settings.min_token_rows:
        p = rows_with_label[tok, label] / k
        if p > prior:
          scored.append((-p, -k, tok))
    predictive[label] = [{"token": tok, "rows": -k, "p_label": round(-p, 4), "lift": round(-p / prior, 3)}
                         for p, k, tok in sorted(scored)[: settings.top_tokens]]
  return {"counts": dict(sorted(counts.items())), "imbalance_ratio": round(sizes[-1] / sizes[0], 3),
          "label_prior": {lab: round(c / n, 4) for lab, c in sorted(counts.items())},
          "predictive_tokens": predictive}


def label_variants(rows: list[readers.Row], label_column: str) -> dict[str, list[str]]:
  """Normalised labels written several ways in the data ('Positive', 'positive ')."""
  seen = collections.defaultdict(set)
  for r in rows:
    raw = r.fields.get(label_column)
    try:
      seen[records.normalize_label(raw, label_column)].add(str(raw))
    except Exception:  # noqa: BLE001 - unusable labels are reported as invalid rows
      continue
  return {k: sorted(v) for k, v in sorted(seen.items()) if len(v) > 1}


def audit(splits: dict[str, list[readers.Row]], d, tokenizer=None, settings: Settings | None = None,
          unreadable: list[dict] = ()) -> dict:
  """audit.json's content for rows per split (`read`), data config `d` (columns)."""
  settings = settings or Settings()
  label_column = d.label_column
  out = {"source": d.source, "columns": {"text": d.text_column, "text_pair": d.text_pair_column,
                                         "label": label_column},
         "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
         "settings": {"near_threshold": settings.near.threshold, "num_perm": settings.near.num_perm,
                      "ngram": settings.near.ngram, "seq_len": settings.seq_len, "lang": settings.lang},
         "unreadable": {"count": len(unreadable),
                        "rows": [{k: r[k] for k in ("file", "row", "reason")} for r in unreadable]},
         "splits": {}}
  kept: dict[str, tuple[list[records.Example], list[str]]] = {}
  for name, rows in splits.items():
    examples, invalid = records.parse(rows, d.text_column, d.text_pair_column, label_column)
    cleaned = [ex.cleaned for ex in examples]
    lengths = token_lengths([ex.text for ex in examples],
                            [ex.pair for ex in examples] if d.text_pair_column else None, tokenizer)
    dups, keep = duplicate_stats(examples, cleaned, settings)
    kept[name] = ([examples[i] for i in keep], [cleaned[i] for i in keep])
    out["splits"][name] = {
      "rows": len(rows), "valid": len(examples),
      "invalid": {"count": len(invalid),
                  "by_reason": dict(collections.Counter(readers.reason_kind(r["reason"]) for r in invalid)),
                  "rows": [{k: r[k] for k in ("file", "row", "reason")} for r in invalid]},
      "lengths": length_stats(lengths, settings.seq_len, "tokens" if tokenizer is not None else "words"),
      "duplicates": dups,
      "labels": label_stats(examples, settings) if label_column else {},
      "label_variants": label_variants(rows, label_column) if label_column else {},
      "encoding": encoding_problems(examples, settings),
    }
  if "train" in kept:
    train_ex, train_clean = kept["train"]
    leaked_train: set[int] = set()
    for name, (ex, cleaned) in kept.items():
      if name == "train":
        continue
      matches = dedup.leaks(train_clean, cleaned, settings.near)
      leaked_train.update(m.of for m in matches)
      first = {}
      for m in matches:  # exact beats near for the same row
        if m.index not in first or (m.kind == "exact" and first[m.index].kind != "exact"):
          first[m.index] = m
      kinds = collections.Counter(m.kind for m in first.values())
      out["splits"][name]["leaks"] = {
        "rows": len(first), "exact": kinds["exact"], "near": kinds["near"],
        "share": round(len(first) / max(1, len(ex)), 4),
        "examples": [_pair(ex[m.index], train_ex[m.of], m) for m in _spread(list(first.values()), settings.examples)],
      }
    out["splits"]["train"]["leaked_rows"] = {
      "count": len(leaked_train),
      "rows": [train_ex[i].where() for i in sorted(leaked_train)][: settings.examples],
    }
  return out
