"""The tweets data-quality table: results.json of RUNS/<variant>/<seed> as one markdown table.

  python benchmarks/tweets_table.py --runs=/work/runs/tweets [--baseline=raw]

The runs come from benchmarks/tweets_table.sh (configs/tweets_minilm.py:<variant>,table, seeds
0-2). Per variant: test macro-F1 and accuracy as mean +- sample std over the seeds with the
min-max range, per-class test recall (mean), train rows used (after the quality steps), wall time
per run (the whole process, from RUNS/logs/wall.txt that tweets_table.sh writes; else run.json's
start to results.json's write, which leaves out reading the data and loading the model), and the
macro-F1 difference from the baseline variant in points, beside the two variants' summed seed
std for judging it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from pathlib import Path

VARIANTS = ("raw", "clean", "dedup", "confidence", "label_errors", "balance")
CLASSES = ("negative", "neutral", "positive")


def walls(runs: Path) -> dict[tuple[str, str], float]:
  """{(variant, seed): seconds} from tweets_table.sh's log lines 'VARIANT SEED rc=0 wall_s=N'."""
  path, out = runs / "logs" / "wall.txt", {}
  for line in path.read_text().splitlines() if path.is_file() else []:
    v, s, rc, wall = line.split()
    if rc == "rc=0":
      out[v, s] = float(wall.split("=")[1])
  return out


def load(run: Path, wall_s: float | None = None) -> dict | None:
  """One finished run's figures, or None while it has no results.json."""
  results = run / "results.json"
  if not results.is_file():
    return None
  res = json.loads(results.read_text())
  meta = json.loads((run / "run.json").read_text())
  start = dt.datetime.fromisoformat(meta["start_time"])
  end = dt.datetime.fromtimestamp(results.stat().st_mtime, tz=dt.timezone.utc)
  test = res["test"]
  return {
    "f1": test["f1_macro"], "acc": test["accuracy"],
    "recall": {c: test[f"recall/{c}"] for c in CLASSES},
    "train_rows": meta["extra"]["data_stats"]["train"]["examples"],
    "wall_s": wall_s if wall_s is not None else (end - start).total_seconds(),
  }


def _spread(xs: list[float]) -> str:
  """'mean +- std [min-max]' in points (x100); std is the sample std (n-1), 0 for one seed."""
  m = statistics.mean(xs) * 100
  sd = statistics.stdev(xs) * 100 if len(xs) > 1 else 0.0
  return f"{m:.1f} ± {sd:.1f} [{min(xs) * 100:.1f}-{max(xs) * 100:.1f}]"


def table(runs: Path, baseline: str = "raw") -> str:
  w = walls(runs)
  found = {v: [r for s in sorted((runs / v).glob("[0-9]*")) if (r := load(s, w.get((v, s.name))))]
           for v in VARIANTS if (runs / v).is_dir()}
  found = {v: rs for v, rs in found.items() if rs}
  base = found.get(baseline)
  head = ("| variant | seeds | test macro-F1 | test accuracy | recall neg / neu / pos | train rows "
          "| wall min/run | ΔF1 vs " + baseline + " (std sum) |")
  lines = [head, "|---" * 8 + "|"]
  for v, rs in found.items():
    f1s = [r["f1"] for r in rs]
    rec = " / ".join(f"{statistics.mean(r['recall'][c] for r in rs) * 100:.1f}" for c in CLASSES)
    rows = sorted({r["train_rows"] for r in rs})
    wall = statistics.mean(r["wall_s"] for r in rs) / 60
    delta = "-"
    if base and v != baseline:
      bf = [r["f1"] for r in base]
      sd = sum(statistics.stdev(x) * 100 if len(x) > 1 else 0.0 for x in (f1s, bf))
      delta = f"{(statistics.mean(f1s) - statistics.mean(bf)) * 100:+.1f} ({sd:.1f})"
    lines.append(f"| {v} | {len(rs)} | {_spread(f1s)} | {_spread([r['acc'] for r in rs])} | {rec} "
                 f"| {'/'.join(map(str, rows))} | {wall:.1f} | {delta} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", required=True, help="folder holding <variant>/<seed> run workdirs")
  p.add_argument("--baseline", default="raw", help="variant the F1 differences are taken from")
  a = p.parse_args()
  print(table(Path(a.runs), a.baseline))


if __name__ == "__main__":
  main()
