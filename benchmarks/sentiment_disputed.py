"""How much of a sentiment run's error is on rows whose label human readers dispute.

The Rotten Tomatoes labels come from the review a snippet was cut from (Pang & Lee: ids 1-5331
from positive reviews). VADER's raters scored each snippet on its own, -4 to +4; where their
mean takes the other side from the label, the snippet reads the opposite way out of context
("has flaws, but it also has humor and heart", labelled negative). A model that reads the text
as people do is scored wrong on such rows, so a split with more of them scores lower.

For each split of the recipe (the rows exactly as jaxtune splits them): how many rows are
disputed, and, given run directories, each run's accuracy on the undisputed and the disputed
test rows (from its errors.jsonl).

  python benchmarks/sentiment_disputed.py [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe_rows() -> dict:
  sys.path.insert(0, str(ROOT))
  from configs import sentiment_minilm
  from jaxtune import data as data_lib
  from jaxtune.data import readers

  d = sentiment_minilm.get_config().data
  return data_lib.read_splits(d, readers.BadRows("error"))


def disputed(row) -> bool:
  """The raters' mean score is on the other side of zero from the label (or exactly zero)."""
  positive = row.fields["label"] == "positive"
  return (row.fields["score"] > 0) != positive


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("runs", nargs="*", help="workdirs of finished sentiment_minilm runs")
  args = p.parse_args(argv)
  rows = recipe_rows()
  for split, rs in rows.items():
    n = sum(disputed(r) for r in rs)
    print(f"{split:10s} {len(rs):5d} rows, {n:4d} disputed ({n / len(rs):.2%}): the raters' "
          f"sign agrees with the label on {1 - n / len(rs):.2%}")
  test = rows["test"]
  for run in args.runs:
    errors = Path(run) / "errors.jsonl"
    wrong = {(e["file"], e["row"]) for e in map(json.loads, errors.read_text().splitlines())}
    is_wrong = [(r.file, r.row) in wrong for r in test]
    if sum(is_wrong) != len(wrong):
      raise SystemExit(f"{errors}: {len(wrong)} mistakes, {sum(is_wrong)} of them on this "
                       "recipe's test rows; was the run made with another split?")
    groups = {"undisputed": [w for r, w in zip(test, is_wrong) if not disputed(r)],
              "disputed": [w for r, w in zip(test, is_wrong) if disputed(r)]}
    parts = [f"{k} {1 - sum(v) / len(v):.4f} ({sum(v)} wrong of {len(v)})" for k, v in groups.items()]
    print(f"{run}: test accuracy {1 - sum(is_wrong) / len(test):.4f}; " + "; ".join(parts))


if __name__ == "__main__":
  main()
