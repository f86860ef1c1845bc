"""`jaxtune data audit --label_errors` and `data clean --drop_label_errors` end to end, in a
subprocess (absl flags are process-global), on a small file with planted label flips.

The encoder is a tiny random BERT over a made-up vocabulary written here: each class's texts use
their own words, so even random mean-pooled embeddings separate the classes and the planted
flips (a text of one class labelled as the other) are the rows the model contradicts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
WORDS = {"pos": ("sunny", "lovely", "bright", "joyful", "warm"),
         "neg": ("rainy", "awful", "grim", "gloomy", "cold")}
FILLER = ("the", "day", "was", "and", "very", "today")
FLIPPED = (7, 20, 33, 58)  # 1-based file rows whose label is the other class's (2 each way)


def _run(*args):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "jaxtune.main", "data", *args], env=env,
                        capture_output=True, text=True, cwd=REPO)


def _tiny_encoder(path: Path) -> str:
  torch = pytest.importorskip("torch")
  from transformers import BertConfig, BertModel, BertTokenizerFast

  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *WORDS["pos"], *WORDS["neg"]]
  BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(path))
  torch.manual_seed(0)
  cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=32)
  BertModel(cfg).save_pretrained(str(path))
  return str(path)


def _rows(n: int, seed: int, flipped=()) -> list[dict]:
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(1, n + 1):
    label = ("pos", "neg")[i % 2]
    words = [*rng.choice(WORDS[label], 4, replace=False), *rng.choice(FILLER, 2)]
    rng.shuffle(words)
    given = ("neg" if label == "pos" else "pos") if i in flipped else label
    rows.append({"text": " ".join(words), "label": given})
  return rows


def _write(path: Path, rows: list[dict]) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_audit_lists_and_clean_drops_planted_label_errors(tmp_path):
  pytest.importorskip("cleanlab")
  encoder = _tiny_encoder(tmp_path / "encoder")
  files = [f"--data={_write(tmp_path / 'train.jsonl', _rows(80, 0, FLIPPED))}",
           f"--validation_data={_write(tmp_path / 'val.jsonl', _rows(10, 1))}",
           f"--test_data={_write(tmp_path / 'test.jsonl', _rows(10, 2))}",
           f"--encoder={encoder}", "--label_error_folds=4", "--lang="]
  done = _run("audit", *files, f"--out={tmp_path / 'audit'}", "--label_errors")
  assert done.returncode == 0, done.stderr[-3000:]
  listed = [json.loads(x) for x in (tmp_path / "audit" / "label_errors.jsonl").read_text().splitlines()]
  flagged = {r["row"] for r in listed}
  # A cheap model on 80 rows: most planted flips found, and nothing else flagged.
  assert flagged <= set(FLIPPED) and len(flagged) >= len(FLIPPED) - 1, listed
  for r in listed:  # the suggestion is the class the text's words belong to
    assert r["given"] != r["suggested"] and r["confidence"] > 0.5
  a = json.loads((tmp_path / "audit" / "audit.json").read_text())
  assert a["label_errors"]["flagged"] == len(flagged) and a["label_errors"]["rows"] == 80
  assert f"label errors: {len(flagged)} of 80 train rows flagged" in done.stdout

  done = _run("clean", *files, f"--out={tmp_path / 'clean'}", "--drop_label_errors")
  assert done.returncode == 0, done.stderr[-3000:]
  dropped = [json.loads(x) for x in (tmp_path / "clean" / "dropped.jsonl").read_text().splitlines()]
  assert {r["row"] for r in dropped} == flagged  # the rows the audit listed, no other
  assert all("contradicted" in json.dumps(r) for r in dropped)
  kept = (tmp_path / "clean" / "train.jsonl").read_text().splitlines()
  assert len(kept) == 80 - len(flagged)
  # Every drop is a label error's: the file has no other problem for clean to drop.
  summary = json.loads((tmp_path / "clean" / "clean.json").read_text())
  assert summary["splits"]["train"]["dropped"] == {"label_error": len(flagged)}
