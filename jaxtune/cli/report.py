"""`jaxtune report --workdir=DIR [--compare=DIR2 ...] [--out=FILE]`.

Writes one self-contained HTML page (no network, no scripts; open it in any browser, mail it,
attach it to an issue) of a run: loss and metric curves (train and validation), learning rate,
throughput, the confusion matrix, the most confident test errors, data statistics, and the
config against the recipe it started from. With --compare, the runs' curves are overlaid and
their results and configs set side by side. A run still training, or one that crashed, is
reported as far as it got, and the page says what is missing.

Default output: DIR/report.html, replaced when the command runs again (it is jaxtune's own
file); a --out elsewhere that exists needs --overwrite. A run's own records are never replaced.
"""

from __future__ import annotations

from absl import flags

from jaxtune.cli import run_app

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to report: a `jaxtune train` workdir.")
_COMPARE = flags.DEFINE_multi_string(
  "compare", [], "Another run's workdir to overlay and set side by side (repeat for more).")
_OUT = flags.DEFINE_string("out", "", "The HTML file to write (default: WORKDIR/report.html).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a --out file jaxtune did not write.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  from jaxtune import report

  path, runs = report.write(_WORKDIR.value, _COMPARE.value, _OUT.value, _OVERWRITE.value)
  for r in runs:
    print(f"{r.name}: {r.status}" + "".join(f"\n  missing: {m}" for m in r.missing))
  print(f"report: {path}")


def run(argv):
  run_app(__name__, main, argv)
