"""Clean removes exactly the planted rows, each with its reason, repairs the rest, loses nothing."""

import json

from jaxtune.data.quality import audit, clean, dedup


def run_clean(planted, tmp_path, **settings):
  d = planted.data_config()
  rows, unreadable = audit.read(d)
  result = clean.clean(rows, d, None, clean.Settings(**settings), unreadable)
  clean.write(result, tmp_path / "clean")
  return result


def _dropped(result, split, step):
  return sorted(r["row"] for r in result.dropped if r["split"] == split and r["step"] == step)


def test_removes_exactly_the_planted_rows(planted, tmp_path):
  result = run_clean(planted, tmp_path)
  p = planted.rows["train"]
  assert _dropped(result, "", "unreadable") == p["unreadable"]
  assert _dropped(result, "train", "invalid") == p["invalid"]
  assert _dropped(result, "train", "exact_duplicate") == p["exact"]
  assert _dropped(result, "train", "near_duplicate") == p["near"]
  assert _dropped(result, "train", "leak") == planted.leaked_train_rows
  assert len(result.dropped) == 1 + 4 + 3 + 2 + 3
  assert not [r for r in result.dropped if r["split"] in ("validation", "test")]
  summary = result.summary["splits"]
  assert summary["train"]["kept"] == 75 - 12
  assert summary["train"]["repaired"]["mojibake"] == 2
  assert (summary["validation"]["kept"], summary["test"]["kept"]) == (17, 16)
  # Nothing lost: every train file line is kept or dropped.
  kept_rows = {json.dumps(r, sort_keys=True) for r in result.kept["train"]}
  assert len(kept_rows) == len(result.kept["train"])
  dup = next(r for r in result.dropped if r["step"] == "exact_duplicate")
  assert dup["reason"] == "exact duplicate of row 2" and dup["of"]["row"] == 2


def test_cleaned_text_and_labels(planted, tmp_path):
  result = run_clean(planted, tmp_path)
  texts = [r["text"] for r in result.kept["train"]]
  assert any("café was" in t for t in texts) and not any("Ã" in t for t in texts)
  assert any("don't" in t or "don’t" in t for t in texts)
  assert not any("<b>" in t or "\x07" in t or "  " in t for t in texts)
  assert {r["label"] for r in result.kept["train"]} == {"pos", "neg"}  # ' Pos' -> 'pos'
  written = (tmp_path / "clean" / "train.jsonl").read_text().splitlines()
  assert [json.loads(x) for x in written] == result.kept["train"]
  dropped = (tmp_path / "clean" / "dropped.jsonl").read_text().splitlines()
  assert len(dropped) == len(result.dropped)


def test_cleaned_set_audits_clean(planted, tmp_path):
  """What clean writes has no duplicates or leaks left, by the same audit."""
  run_clean(planted, tmp_path)
  out = tmp_path / "clean"
  d = planted.data_config(source=str(out / "train.jsonl"), validation_source=str(out / "validation.jsonl"),
                          test_source=str(out / "test.jsonl"))
  rows, unreadable = audit.read(d)
  a = audit.audit(rows, d, None, audit.Settings(lang=""), unreadable)
  tr = a["splits"]["train"]
  assert a["unreadable"]["count"] == 0 and tr["invalid"]["count"] == 0
  assert tr["duplicates"]["exact"] == tr["duplicates"]["near"] == 0
  assert tr["leaked_rows"]["count"] == 0
  assert tr["encoding"]["mojibake"]["count"] == tr["encoding"]["html"]["count"] == 0
  assert tr["encoding"]["control_chars"]["count"] == 0


def test_filters_and_switches(planted, tmp_path):
  result = run_clean(planted, tmp_path, drop_leaks=False, near=dedup.NearParams(threshold=0),
                     max_tokens=15, lang="en")
  assert _dropped(result, "train", "leak") == []
  assert _dropped(result, "train", "near_duplicate") == []
  long = [r for r in result.dropped if r["step"] == "length" and r["split"] == "train"]
  assert [r["row"] for r in result.dropped if r["split"] == "validation"] == planted.rows["validation"]["near_leak"]
  # Longer than 15 words: the near copies (kept by dedup now), mojibake and URL rows, French.
  assert sorted(r["row"] for r in long) == sorted(
    planted.rows["train"][k][i] for k, i in [("near", 0), ("near", 1), ("mojibake", 0), ("mojibake", 1),
                                             ("url", 0), ("language", 0)])
  assert all(r["reason"].startswith("too long: ") for r in long)
  assert all(len(r["text"].split()) <= 15 for rows in result.kept.values() for r in rows)
  # The language filter sees only what the length filter left: the French row went first.
  assert _dropped(result, "train", "language") == []
