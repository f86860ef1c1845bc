"""The audit counts every planted problem exactly, at the planted rows."""

from jaxtune.data.quality import audit, dedup, report


def _rows(listing):
  return sorted(x["row"] for x in listing)


def run_audit(planted, tokenizer=None, **settings):
  d = planted.data_config()
  rows, unreadable = audit.read(d)
  return audit.audit(rows, d, tokenizer, audit.Settings(**settings), unreadable)


def test_counts_every_planted_problem(planted):
  a = run_audit(planted)
  p = planted.rows["train"]
  assert a["unreadable"]["count"] == 1 and a["unreadable"]["rows"][0]["row"] == p["unreadable"][0]
  tr = a["splits"]["train"]
  assert tr["invalid"]["count"] == 4
  assert _rows(tr["invalid"]["rows"]) == p["invalid"]
  assert tr["duplicates"]["exact"] == 3 and tr["duplicates"]["near"] == 2
  assert tr["duplicates"]["conflicting_labels"] == 1
  dup_rows = sorted(x["row"]["row"] for x in tr["duplicates"]["examples"])
  assert dup_rows == sorted(p["exact"] + p["near"])
  enc = tr["encoding"]
  assert {k: enc[k]["count"] for k in enc} == {
    "mojibake": 2, "control_chars": 1, "html": 1, "urls": 1, "other_language": 1}
  assert _rows(enc["mojibake"]["examples"]) == p["mojibake"]
  assert _rows(enc["control_chars"]["examples"]) == p["control"]
  assert _rows(enc["html"]["examples"]) == p["html"]
  assert _rows(enc["urls"]["examples"]) == p["url"]
  assert _rows(enc["other_language"]["examples"]) == p["language"]
  assert enc["other_language"]["languages"] == {"fr": 1}
  assert tr["labels"]["counts"] == planted.train_labels
  assert tr["labels"]["imbalance_ratio"] == round(planted.train_labels["pos"] / planted.train_labels["neg"], 3)
  assert tr["label_variants"] == {"pos": [" Pos", "pos"]}
  assert tr["leaked_rows"]["count"] == 3
  assert _rows(tr["leaked_rows"]["rows"]) == planted.leaked_train_rows
  val, test = a["splits"]["validation"]["leaks"], a["splits"]["test"]["leaks"]
  assert (val["rows"], val["exact"], val["near"]) == (2, 1, 1)
  assert (test["rows"], test["exact"], test["near"]) == (1, 1, 0)
  assert sorted(x["row"]["row"] for x in val["examples"]) == (
    planted.rows["validation"]["exact_leak"] + planted.rows["validation"]["near_leak"])
  for name in ("validation", "test"):
    sp = a["splits"][name]
    assert sp["invalid"]["count"] == 0 and sp["duplicates"]["exact"] == sp["duplicates"]["near"] == 0


def test_exact_only_when_threshold_off(planted):
  a = run_audit(planted, near=dedup.NearParams(threshold=0.0), lang="")
  tr = a["splits"]["train"]
  assert (tr["duplicates"]["exact"], tr["duplicates"]["near"]) == (3, 0)
  assert a["splits"]["validation"]["leaks"]["rows"] == 1
  assert "other_language" not in tr["encoding"]


def test_lengths_and_truncation_in_tokens(planted, causal_tok_dir):
  from jaxtune.data import load_tokenizer

  tok = load_tokenizer(causal_tok_dir)  # bytes: a token per byte, no special tokens
  a = run_audit(planted, tok, seq_len=60, lang="")
  le = a["splits"]["validation"]["lengths"]
  import json

  texts = [json.loads(line)["text"] for line in planted.validation.read_text().splitlines()]
  sizes = sorted(len(t.encode()) for t in texts)
  assert le["unit"] == "tokens" and le["max"] == sizes[-1] and le["min"] == sizes[0]
  assert le["truncated"] == sum(s > 60 for s in sizes)
  assert le["truncated_share"] == round(le["truncated"] / len(sizes), 4)
  assert sum(le["histogram"]["counts"]) == len(sizes)


def test_predictive_token_finds_a_planted_shortcut(tmp_path, planted):
  # 'acme' appears only in negative rows: it should top the list for 'neg'.
  import json

  from tests.data.quality.conftest import base_sentences

  rows = [{"text": t + (" acme" if i % 2 else ""), "label": "neg" if i % 2 else "pos"}
          for i, t in enumerate(base_sentences(40, seed=3))]
  path = tmp_path / "shortcut.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  d = planted.data_config(source=str(path), validation_source=str(path), test_source="", split="0.5,0.5")
  rows_by_split, _ = audit.read(d)
  a = audit.audit({"train": rows_by_split["train"]}, d, None, audit.Settings(lang=""))
  top = a["splits"]["train"]["labels"]["predictive_tokens"]["neg"][0]
  assert top == {"token": "acme", "rows": 20, "p_label": 1.0, "lift": 2.0}


def test_report_pages(planted, tmp_path):
  a = run_audit(planted, lang="")
  paths = report.write(a, tmp_path / "out")
  md = paths["md"].read_text()
  assert "| train | 75 | 71 | 4 | 3 | 2 |" in md
  page = paths["html"].read_text()
  assert page.count("data:image/png;base64,") == 2 and "http" not in page.split("<details>")[0].replace(
    "https://example.com/review", "")
