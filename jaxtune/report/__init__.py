"""`jaxtune report`: a run's records (or several runs') as one self-contained HTML page.

`records` reads a workdir (and says what is missing), `svg` draws the curves, `html` lays out
the page; `write` puts it where the output rules of `jaxtune.outputs` allow.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxtune import outputs
from jaxtune.report import html, records

REPORT = "report.html"
# What a run wrote: a report may never land on one of these, not even with --overwrite.
RECORDS = ("config.json", "run.json", "metrics.jsonl", "text.jsonl", "results.json",
           "errors.jsonl", "checkpoints", "tb", "export", "jaxtune.lock")


def _inputs(runs: list[records.Run]) -> list:
  out = []
  for r in runs:
    out += [r.path / n for n in RECORDS]
    out += list(r.path.glob("eval_*.json*")) + list(r.path.glob("skipped_rows*.jsonl"))
  return out


def output(runs: list[records.Run], out: str = "", overwrite: bool = False):
  """(the path to write, the `outputs.Folder` to commit or None).

  The report is a derived file: in a run's workdir (the default, DIR/report.html) it is
  recorded in the folder's manifest as `jaxtune eval`'s files are, so running the command again
  replaces it; elsewhere, as `jaxtune generate --out`, a file that exists needs --overwrite.
  Never over a run's own records."""
  inputs = _inputs(runs)
  target = Path(out) if out else Path(os.fspath(runs[0].path)) / REPORT
  if out:
    outputs.check_name(target.name, "--out")
  workdirs = {os.path.realpath(os.fspath(r.path)): r.path for r in runs}
  folder = workdirs.get(os.path.realpath(target.parent or "."))
  if folder is None and not out:
    folder = runs[0].path
  if folder is not None:
    f = outputs.Folder(folder, command="jaxtune report", flag="--out", overwrite=overwrite,
                       own=False, inputs=inputs, expected=(target.name,))
    return f.path(target.name), f
  return outputs.check_new_file(target, flag="--out", overwrite=overwrite, inputs=inputs), None


def write(workdir, compare: list | tuple = (), out: str = "", overwrite: bool = False):
  """Reads the runs, writes the page, returns (its path, the runs)."""
  paths = [workdir, *compare]
  flags = ["--workdir"] + ["--compare"] * len(compare)
  for p, flag in zip(paths, flags):
    records.check_workdir(p, flag)  # every path named before any is read
  names = records.names(paths)
  runs = [records.load(p, flag, name) for p, flag, name in zip(paths, flags, names)]
  path, folder = output(runs, out, overwrite)
  text = html.page(runs)
  if folder is None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  if folder is not None:
    folder.commit()
  return path, runs
