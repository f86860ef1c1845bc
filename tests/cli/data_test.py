"""`jaxtune data audit|clean` end to end, in a subprocess (absl flags are process-global)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.data.quality.conftest import build_planted

REPO = Path(__file__).resolve().parents[2]


def _run(*args):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "jaxtune.main", "data", *args], env=env,
                        capture_output=True, text=True, cwd=REPO)


def test_audit_then_clean(tmp_path):
  p = build_planted(tmp_path)
  files = [f"--data={p.train}", f"--validation_data={p.validation}", f"--test_data={p.test}"]
  done = _run("audit", *files, f"--out={tmp_path / 'audit'}", "--lang=")
  assert done.returncode == 0, done.stderr[-3000:]
  a = json.loads((tmp_path / "audit" / "audit.json").read_text())
  tr = a["splits"]["train"]
  assert (tr["invalid"]["count"], tr["duplicates"]["exact"], tr["duplicates"]["near"]) == (4, 3, 2)
  assert tr["leaked_rows"]["count"] == 3 and "| train | 75 | 71 |" in done.stdout
  assert (tmp_path / "audit" / "audit.html").stat().st_size > 10_000

  done = _run("clean", *files, f"--out={tmp_path / 'clean'}")
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads((tmp_path / "clean" / "clean.json").read_text())
  assert summary["splits"]["train"]["dropped"] == {
    "exact_duplicate": 3, "invalid": 4, "leak": 3, "near_duplicate": 2}
  dropped = (tmp_path / "clean" / "dropped.jsonl").read_text().splitlines()
  kept = (tmp_path / "clean" / "train.jsonl").read_text().splitlines()
  assert len(dropped) == 13 and len(kept) == 75 - 12


def test_usage_errors():
  done = _run("--help")
  assert done.returncode == 0 and "--near_threshold" in done.stdout and "--min_tokens" in done.stdout
  done = _run("inspect", "--data=x.jsonl", "--out=/tmp/x")
  assert done.returncode != 0 and "audit|clean" in done.stderr
