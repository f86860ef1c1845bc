"""benchmarks/tweets_table.py: finished runs' results.json become the data-quality table."""

from __future__ import annotations

import json
import os

from tests.benchmarks.sentiment_disputed_test import _load

script = _load("tweets_table")


def _run(path, f1, acc, rows, seconds):
  path.mkdir(parents=True)
  test = {"f1_macro": f1, "accuracy": acc, "recall/negative": 0.9, "recall/neutral": 0.5,
          "recall/positive": 0.6}
  (path / "results.json").write_text(json.dumps({"best_step": 94, "val": test, "test": test}))
  (path / "run.json").write_text(json.dumps({"start_time": "2026-11-29T23:00:00+00:00",
                                             "extra": {"data_stats": {"train": {"examples": rows}}}}))
  end = 1_795_993_200 + seconds  # 2026-11-29T23:00:00Z + seconds
  os.utime(path / "results.json", (end, end))


def test_table_means_spreads_and_difference_from_raw(tmp_path):
  _run(tmp_path / "raw" / "0", 0.60, 0.70, 3000, 300)
  _run(tmp_path / "raw" / "1", 0.62, 0.72, 3000, 360)
  _run(tmp_path / "dedup" / "0", 0.66, 0.74, 2900, 240)
  _run(tmp_path / "dedup" / "1", 0.70, 0.76, 2900, 240)
  (tmp_path / "dedup" / "2").mkdir()  # still training: no results.json, not counted
  lines = script.table(tmp_path).splitlines()
  assert len(lines) == 4 and lines[2].startswith("| raw | 2 |")
  raw, dedup = (line.split(" | ") for line in lines[2:])
  # mean ± sample std [min-max], in points
  assert raw[2] == "61.0 ± 1.4 [60.0-62.0]" and raw[3] == "71.0 ± 1.4 [70.0-72.0]"
  assert raw[4] == "90.0 / 50.0 / 60.0" and raw[5] == "3000" and raw[6] == "5.5"
  assert dedup[2] == "68.0 ± 2.8 [66.0-70.0]" and dedup[5] == "2900" and dedup[6] == "4.0"
  assert dedup[7] == "+7.0 (4.2) |"  # the difference and the two seed stds summed
  # The runner's whole-process wall times win where it logged them (a failed run's line is not used).
  (tmp_path / "logs").mkdir()
  (tmp_path / "logs" / "wall.txt").write_text("raw 0 rc=0 wall_s=420\nraw 1 rc=1 wall_s=5\n")
  assert script.table(tmp_path).splitlines()[2].split(" | ")[6] == "6.5"  # (420 + 360) / 2 s
