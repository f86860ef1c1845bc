"""The report page: one self-contained HTML file (inline SVG and CSS, no script, nothing fetched).

Sections: what is missing, results (side by side for several runs), curves (overlaid for several
runs), then per run the confusion matrix, the worst errors, text samples, data statistics, the
config against its recipe, and the environment.
"""

from __future__ import annotations

import datetime
import html
import json
import re
import statistics

from jaxtune.report import records, svg
from jaxtune.report.records import Run

EVENTS = {"train/stopped_early": "early stopping", "train/stopped_by_hook": "stopped by the search",
          "alarm/overfitting": "overfitting alarm"}
COUNTS = ("examples", "tokens")  # per-evaluation counts: in the results, not curves
HIGHER_BETTER = re.compile(r"(^|/)(accuracy|f1|precision|recall)")
LOWER_BETTER = re.compile(r"(^|/)(loss|perplexity)$")
NAMED = {  # chart title, y label, keys: the usual curves first, in this order
  "loss": ("Loss (train and validation)", "loss", ("train/loss", "eval/loss")),
  "lr": ("Learning rate", "learning rate", ("train/learning_rate",)),
  "speed": ("Throughput", "tokens / s", ("train/tokens_per_sec",)),
  "mfu": ("Model FLOPs utilisation", "MFU", ("train/mfu",)),
  "grad": ("Gradient norm", "global norm", ("train/grad_norm",)),
}
FIT = (("accuracy", "accuracy"), ("f1_macro", "macro F1"))  # jaxtune.train_curves.METRICS
STYLE = """
body{font-family:system-ui,sans-serif;max-width:78em;margin:1.5em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;
text-align:right;vertical-align:top}th{background:#f5f5f5}td.text,th.text{text-align:left}
td.best{font-weight:bold;background:#eaf5ea}.missing{background:#fff4e0;border:1px solid #f0c36d;
padding:.5em 1em;border-radius:4px}.charts{display:grid;grid-template-columns:repeat(auto-fill,
minmax(30em,1fr));gap:1em}svg.chart{width:100%;height:auto;font-size:11px;background:#fff}
svg .title{font-size:13px;font-weight:bold}svg .grid{stroke:#eee}svg .axis{stroke:#888}
svg .frame{fill:none;stroke:#888}.bar{background:#1f77b4;height:.8em;display:inline-block;
margin-right:.4em}pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em}code{background:#f3f3f3}
.muted{color:#777}
"""
esc = html.escape


def _num(v) -> str:
  if isinstance(v, bool) or not isinstance(v, int | float):
    return esc(str(v))
  if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e9:
    return f"{int(v):,}"
  return f"{v:.4g}"


def _table(head: list[str], rows: list[list[str]], left=(0,)) -> str:
  """Cells are HTML already (a cell may be a whole `<td ...>`); the columns `left` (numbers, or
  "all") hold text, left-aligned, the others numbers."""
  def cls(i):
    return ' class="text"' if left == "all" or i in left else ""

  out = ["<table><tr>" + "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head)) + "</tr>"]
  for r in rows:
    out.append("<tr>" + "".join(c if c.startswith("<td") else f"<td{cls(i)}>{c}</td>"
                                for i, c in enumerate(r)) + "</tr>")
  return "".join(out) + "</table>"


# ------------------------------------------------------------------------------- curves


def chart_groups(runs: list[Run]) -> list[tuple[str, str, list[str]]]:
  """(title, y label, keys) of each chart: every key logged by any run is in one, except the
  per-evaluation counts and the event flags (listed as events)."""
  logged = list(dict.fromkeys(k for r in runs for k in r.keys()))
  left = [k for k in logged if k not in EVENTS and k.removeprefix("eval/") not in COUNTS]
  out = []

  def take(title, ylabel, keys):
    keys = [k for k in keys if k in left]
    if keys:
      out.append((title, ylabel, keys))
      for k in keys:
        left.remove(k)

  take(*NAMED["loss"])
  for metric, name in FIT:  # train sample beside validation (jaxtune.train_curves), then the gap
    if f"train/{metric}" in left:
      take(f"{name}: train vs validation", name, [f"train/{metric}", f"eval/{metric}"])
  take("Overfitting gap (train minus validation)", "gap", [f"overfit/{m}_gap" for m, _ in FIT])
  evals = [k for k in left if k.startswith("eval/") and k.count("/") == 1]
  unit = [k for k in evals if all(0 <= v <= 1 for r in runs for _, v in r.series(k))]
  take("Validation metrics", "", unit)
  for k in evals:
    if k not in unit:
      take(f"Validation {k.split('/', 1)[1]}", k.split("/", 1)[1], [k])
  for family in dict.fromkeys(k.split("/")[1] for k in left if k.startswith("eval/")):
    take(f"Validation {family} per class", family,
         [k for k in left if k.startswith(f"eval/{family}/")])
  for name in ("lr", "speed", "mfu", "grad"):
    take(*NAMED[name])
  for k in list(left):
    if any(v for r in runs for _, v in r.series(k)):
      take(k, "", [k])
  return out


def curves(runs: list[Run]) -> str:
  compare = len(runs) > 1
  charts = []
  groups = chart_groups(runs)
  for title, ylabel, keys in groups:
    series = []
    for ri, run in enumerate(runs):
      for ki, key in enumerate(keys):
        color = svg.PALETTE[(ri if compare else ki) % len(svg.PALETTE)]
        dash = svg.DASHES[(ki if compare else int(key.startswith("eval/"))) % len(svg.DASHES)]
        label = f"{run.name}: {key}" if compare else key
        series.append(svg.Series(label, run.series(key), color, dash))
    charts.append(svg.line_chart(series, title=title, ylabel=ylabel))
  if not charts:
    return "<p class='muted'>No metrics logged yet.</p>"
  notes = ""
  if any(r.series("train/tokens_per_sec") for r in runs):
    notes = ("<p class='muted'>The first throughput point of a run (or of a resume) includes "
             "the compilation.</p>")
  events = [f"{esc(r.name)}: {EVENTS[k]} at step {s}" for r in runs for k in EVENTS
            for s, v in r.series(k) if v]
  charted = {k for _, _, keys in groups for k in keys}
  zero = [k for k in dict.fromkeys(k for r in runs for k in r.keys())
          if k not in charted and k not in EVENTS and k.removeprefix("eval/") not in COUNTS]
  if zero:
    notes += f"<p class='muted'>Logged and always 0 (no chart): {esc(', '.join(zero))}.</p>"
  if events:
    notes += "<ul>" + "".join(f"<li>{e}</li>" for e in events) + "</ul>"
  notes += overfitting_gap(runs)
  return f"<div class='charts'>{''.join(charts)}</div>{notes}"


def overfitting_gap(runs: list[Run]) -> str:
  """A sentence per run that logged train-sample metrics: train vs validation at the last
  evaluation and the widest gap, the overfitting a falling train loss does not show."""
  lines = []
  for r in runs:
    for metric, name in FIT:
      train, val = dict(r.series(f"train/{metric}")), dict(r.series(f"eval/{metric}"))
      both = sorted(set(train) & set(val))
      if not both:
        continue
      last = both[-1]
      widest = max(both, key=lambda s: train[s] - val[s])
      lines.append(f"{esc(r.name) + ': ' if len(runs) > 1 else ''}{name} at step {last}: train "
                   f"sample {train[last]:.4f}, validation {val[last]:.4f}, gap "
                   f"{train[last] - val[last]:+.4f} (widest {train[widest] - val[widest]:+.4f} at "
                   f"step {widest})")
  if not lines:
    return ""
  return ("<p><b>Overfitting gap</b> (train sample minus validation):</p><ul class='gap'>"
          + "".join(f"<li>{x}</li>" for x in lines) + "</ul>")


# ------------------------------------------------------------------------------ results


def _scalars(d: dict | None) -> dict:
  return {k: v for k, v in (d or {}).items()
          if isinstance(v, int | float) and not isinstance(v, bool) and "/" not in k}


def _throughput(run: Run) -> float | None:
  vals = [v for _, v in run.series("train/tokens_per_sec")][1:]  # the first includes compiling
  return statistics.median(vals) if vals else None


def results_table(runs: list[Run]) -> str:
  rows: list[tuple[str, list]] = [
    ("status", [r.status for r in runs]),
    ("task", [r.task for r in runs]),
    ("model", [r.config.get("model", {}).get("source", "?") for r in runs]),
    ("steps", [f"{r.last_step if r.last_step is not None else '-'} of {r.total_steps or '?'}"
               for r in runs]),
    ("best step", [(r.results or {}).get("best_step", "-") for r in runs]),
  ]
  metric_rows = []
  for split, label in (("test", "test"), ("val", "validation")):
    keys = list(dict.fromkeys(k for r in runs for k in _scalars((r.results or {}).get(split))))
    metric_rows += [(f"{label} {k}", [_scalars((r.results or {}).get(split)).get(k, "-")
                                      for r in runs]) for k in keys]
  for name in dict.fromkeys(n for r in runs for n in r.evals):
    keys = list(dict.fromkeys(k for r in runs for k in _scalars(r.evals.get(name))))
    metric_rows += [(f"jaxtune eval {name}: {k}", [_scalars(r.evals.get(name)).get(k, "-")
                                                   for r in runs]) for k in keys]
  rows += metric_rows
  rows.append(("median tokens/s", [_throughput(r) or "-" for r in runs]))
  rows.append(("data fingerprint", [r.info.get("data_fingerprint", "-") for r in runs]))
  rows.append(("started", [r.info.get("start_time", "-") for r in runs]))
  out = []
  for label, values in rows:
    cells = [_num(v) for v in values]
    metric = label.rsplit(" ", 1)[-1]
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(runs) > 1 and len(nums) > 1 and (label, values) in metric_rows:
      best = (max if HIGHER_BETTER.search(metric) else min if LOWER_BETTER.search(metric)
              else None)
      if best is not None:
        top = best(nums)
        cells = [f"<td class='best'>{c}</td>" if v == top else c for c, v in zip(cells, values)]
    out.append([esc(label), *cells])
  return _table([""] + [esc(r.name) for r in runs], out)


# ------------------------------------------------------------------------- classification


def confusion(run: Run, split: str) -> str:
  res = (run.results or {}).get(split) or {}
  matrix = res.get("confusion")
  if not matrix:
    return ""
  names = run.label_names or [str(i) for i in range(len(matrix))]
  rows = []
  for i, row in enumerate(matrix):
    total = sum(row) or 1
    cells = []
    for j, n in enumerate(row):
      alpha = n / total
      border = "border:2px solid #2ca02c;" if i == j else ""
      cells.append(f"<td class='cell' data-true='{esc(names[i])}' data-pred='{esc(names[j])}' "
                   f"title='{n} of {total} ({alpha:.0%})' style='{border}background:rgba(31,119,"
                   f"180,{alpha * 0.85:.2f});color:{'#fff' if alpha > 0.55 else '#222'}'>{n}</td>")
    rows.append([f"<b>{esc(names[i])}</b>", *cells])
  matrix_html = _table(["true \\ predicted"] + [esc(n) for n in names], rows)
  per_class = [[esc(n)] + [_num(res.get(f"{m}/{n}", "-")) for m in ("precision", "recall", "f1")]
               for n in names]
  return (f"<h3>Confusion matrix ({'test' if split == 'test' else 'validation'}, best step)</h3>"
          f"<div style='display:flex;gap:2em;flex-wrap:wrap'>{matrix_html}"
          f"{_table(['class', 'precision', 'recall', 'F1'], per_class)}</div>")


def worst_errors(run: Run) -> str:
  if not run.errors:
    return ""
  rows = []
  for i, e in enumerate(run.errors, 1):
    text = esc(str(e.get("text", "")))
    if e.get("text_pair"):
      text += f"<br><span class='muted'>pair:</span> {esc(str(e['text_pair']))}"
    where = f"{e['file'].rsplit('/', 1)[-1]}:{e['row']}" if "file" in e and "row" in e else ""
    rows.append([str(i), _num(e.get("confidence", "-")), esc(str(e.get("label", ""))),
                 esc(str(e.get("predicted", ""))), f"<td class='text error'>{text}</td>",
                 esc(where)])
  head = ["#", "confidence", "label", "predicted", "text", "where"]
  return (f"<h3>Worst errors: the {len(run.errors)} most confident of {run.errors_total} "
          f"misclassified test examples (errors.jsonl)</h3>" + _table(head, rows, left=(2, 3, 4)))


def samples(run: Run) -> str:
  if not run.samples:
    return ""
  shown = run.samples[:1] + run.samples[-2:] if len(run.samples) > 3 else run.samples
  items = "".join(f"<details{' open' if i == len(shown) - 1 else ''}><summary>step {s.get('step')}"
                  f" ({esc(str(s.get('tag', '')))})</summary><pre>{esc(str(s.get('text', '')))}"
                  "</pre></details>" for i, s in enumerate(shown))
  return f"<h3>Text samples (text.jsonl: the first and the latest)</h3>{items}"


# ---------------------------------------------------------------------------- data, config


def data_stats(run: Run) -> str:
  st = run.extra.get("data_stats") or {}
  head = [f"<li>data fingerprint (train split): <code>{esc(str(run.info.get('data_fingerprint', '-')))}"
          "</code></li>"]
  splits = {k: v for k, v in st.items() if isinstance(v, dict) and "rows" in v}
  for k, v in st.items():
    if k not in splits and k != "quality" and v not in ({}, [], ""):
      head.append(f"<li>{esc(k.replace('_', ' '))}: {_num(v) if not isinstance(v, dict) else esc(json.dumps(v))}</li>")
  if not st:
    head.append("<li class='muted'>run.json records no data statistics (a synthetic data set, "
                "or a run from an older jaxtune)</li>")
  out = f"<h3>Data</h3><ul>{''.join(head)}</ul>"
  if splits:
    cols = list(dict.fromkeys(c for v in splits.values() for c in v if c != "label_counts"))
    rows = []
    for name, v in splits.items():
      counts = v.get("label_counts") or {}
      most = max(counts.values(), default=0) or 1
      bars = "<br>".join(f"<span class='bar' style='width:{6 * n / most:.2f}em'></span>"
                         f"{esc(str(label))} {n}" for label, n in counts.items())
      rows.append([esc(name), *[_num(v.get(c, "-")) for c in cols]]
                  + ([f"<td class='text'>{bars}</td>"] if any("label_counts" in s for s in
                                                              splits.values()) else []))
    head_cols = ["split", *[esc(c.replace("_", " ")) for c in cols]]
    if any("label_counts" in s for s in splits.values()):
      head_cols.append("labels")
    out += _table(head_cols, rows, left=(0, len(head_cols) - 1))
  if "quality" in st:
    out += f"<p>data quality on train:</p><pre>{esc(json.dumps(st['quality'], indent=1))}</pre>"
  return out


def _value(v) -> str:
  return f"<code>{esc(json.dumps(v) if not isinstance(v, str) else repr(v))}</code>"


def config_diff(run: Run) -> str:
  what, base, notes = records.recipe_base(run)
  diffs = records.differences(base, records.flat(run.config))
  rows = [[f"<code>{esc(k)}</code>", _value(a), _value(b)] for k, a, b in diffs]
  out = f"<h3>Config against {esc(what)}</h3>"
  out += "".join(f"<p class='muted'>{esc(n)}</p>" for n in notes)
  out += (_table(["key", "recipe" if what.startswith("the recipe") else "default", "this run"],
                 rows, left="all")
          if rows else "<p>The run's config is the recipe's, unchanged.</p>")
  for change in run.info.get("config_changes") or []:
    listed = "; ".join(f"{k}: {v.get('old')!r} → {v.get('new')!r}"
                       for k, v in (change.get("changes") or {}).items())
    out += f"<p>Changed on resume at step {change.get('step')}: {esc(listed)}</p>"
  return out + ("<details><summary>config.json</summary><pre>"
                f"{esc(json.dumps(run.config, indent=2))}</pre></details>")


def between_runs(runs: list[Run]) -> str:
  flats = [records.flat(r.config) for r in runs]
  keys = sorted({k for f in flats for k in f if len({json.dumps(g.get(k, records.ABSENT))
                                                       for g in flats}) > 1})
  if not keys:
    return "<p>The runs' configs are identical.</p>"
  rows = [[f"<code>{esc(k)}</code>", *[_value(f.get(k, records.ABSENT)) for f in flats]]
          for k in keys]
  return _table(["key", *[esc(r.name) for r in runs]], rows, left="all")


def environment(run: Run) -> str:
  i = run.info
  if not i:
    return ""
  items = [f"jaxtune {i.get('versions', {}).get('jaxtune', '?')}, " + ", ".join(
             f"{k} {v}" for k, v in (i.get("versions") or {}).items() if k != "jaxtune"),
           f"{i.get('device_count', '?')} × {i.get('device_kind', '?')} ({i.get('platform', '?')}), "
           f"{i.get('process_count', 1)} process(es), mesh {i.get('mesh', {})}",
           f"git commit {i.get('git_commit') or 'unknown'}"
           + (" (with uncommitted changes)" if i.get("git_dirty") else ""),
           f"host {i.get('hostname', '?')}, started {i.get('start_time', '?')}"]
  return ("<details><summary>Environment (run.json)</summary><ul>"
          + "".join(f"<li>{esc(x)}</li>" for x in items) + "</ul></details>")


# ---------------------------------------------------------------------------------- page


def page(runs: list[Run]) -> str:
  title = (f"Run report: {runs[0].name}" if len(runs) == 1
           else "Run comparison: " + ", ".join(r.name for r in runs))
  body = [f"<h1>{esc(title)}</h1><p class='muted'>"
          + "<br>".join(f"{esc(r.name)}: {esc(str(r.path))}" for r in runs) + "</p>"]
  missing = [(r, m) for r in runs for m in r.missing]
  if missing:
    body.append("<div class='missing'><b>Missing from the records</b><ul>" + "".join(
      f"<li>{esc(r.name) + ': ' if len(runs) > 1 else ''}{esc(m)}</li>" for r, m in missing)
      + "</ul></div>")
  body.append("<h2>Results</h2>" + results_table(runs))
  body.append("<h2>Curves</h2>" + curves(runs))
  if len(runs) > 1:
    body.append("<h2>Config differences between the runs</h2>" + between_runs(runs))
  for r in runs:
    head = f"<h2>{esc(r.name)}</h2>" if len(runs) > 1 else "<h2>Details</h2>"
    parts = [confusion(r, "test"), confusion(r, "val"), worst_errors(r), samples(r),
             data_stats(r), config_diff(r), environment(r)]
    body.append(head + "".join(p for p in parts if p))
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  body.append(f"<p class='muted'>Written by <code>jaxtune report</code> at {stamp}.</p>")
  return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
          "<meta name='viewport' content='width=device-width,initial-scale=1'>"
          f"<link rel='icon' href='data:,'><title>{esc(title)}</title><style>{STYLE}</style>"
          "</head><body>" + "\n".join(body) + "</body></html>\n")
