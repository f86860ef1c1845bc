"""The report page's content: a curve for every metric logged, the confusion matrix cells, the
worst errors, data statistics, the config against the recipe, several runs overlaid, and what
is missing from a run that did not finish. The page is parsed with the standard library's HTML
parser and checked against the values the run's files hold."""

from __future__ import annotations

import json
import os
import shutil
import socket
from html.parser import HTMLParser

import pytest

from jaxtune import outputs, report, workdir_lock
from jaxtune.config import NotARunError
from jaxtune.errors import OutputError
from jaxtune.report import records
from tests.cli.errors import harness
from tests.report.conftest import CONFUSION, LABELS, OVERRIDES, write_classification_run

VOID = {"meta", "link", "br", "img", "input", "hr", "line", "circle", "rect", "polyline", "path"}


class _Elements(HTMLParser):
  """Every element as {"tag", "attrs", "text"} (the text of all it contains)."""

  def __init__(self, page: str):
    super().__init__()
    self.found, self.open = [], []
    self.feed(page)

  def handle_starttag(self, tag, attrs):
    el = {"tag": tag, "attrs": dict(attrs), "text": ""}
    self.found.append(el)
    if tag not in VOID:
      self.open.append(el)

  def handle_startendtag(self, tag, attrs):
    self.found.append({"tag": tag, "attrs": dict(attrs), "text": ""})

  def handle_endtag(self, tag):
    for i in range(len(self.open) - 1, -1, -1):
      if self.open[i]["tag"] == tag:
        del self.open[i:]
        break

  def handle_data(self, data):
    for el in self.open:
      el["text"] += data


def elements(page: str, tag: str, cls: str | None = None) -> list[dict]:
  return [e for e in _Elements(page).found if e["tag"] == tag
          and (cls is None or cls in e["attrs"].get("class", "").split())]


def rows_after(page: str, heading: str) -> list[list[str]]:
  """The cells of the first table after the heading that starts with `heading`."""
  tail = page[page.index(heading):]
  table = tail[tail.index("<table>"):tail.index("</table>") + 8]
  return [[c["text"].strip() for c in _Elements(tr_html).found if c["tag"] in ("td", "th")]
          for tr_html in table.split("<tr>")[1:]]


def series(page: str) -> dict[str, int]:
  """{legend label: number of points} of every curve on the page."""
  return {g["attrs"]["data-label"]: int(g["attrs"]["data-points"]) for g in elements(page, "g", "series")}


# ------------------------------------------------------------------------------ one run


def test_classification_page_shows_curves_confusion_errors_and_data(cls_run):
  workdir, wrote = cls_run
  path, runs = report.write(workdir)
  assert path == workdir / "report.html"
  page = path.read_text()
  assert runs[0].status == "finished" and not runs[0].missing

  # A curve for every metric logged (per-evaluation counts excepted), with all its points.
  logged = {}
  for row in wrote["metrics"].values():
    for k in row:
      logged[k] = logged.get(k, 0) + 1
  shown = series(page)
  expected = {k: n for k, n in logged.items() if k != "eval/examples" and k != "train/skipped_steps"}
  assert shown == expected
  assert "Logged and always 0 (no chart): train/skipped_steps" in page
  titles = [t["text"] for t in elements(page, "text", "title")]
  for title in ("Loss (train and validation)", "Learning rate", "Throughput", "Validation metrics"):
    assert title in titles

  # The confusion matrix: one cell per (true, predicted) pair holding its count.
  cells = {(c["attrs"]["data-true"], c["attrs"]["data-pred"]): int(c["text"])
           for c in elements(page, "td", "cell")}
  assert cells == {(LABELS[i], LABELS[j]): n for i, row in enumerate(CONFUSION)
                   for j, n in enumerate(row)}
  per_class = rows_after(page, "Confusion matrix (test")
  assert per_class[0][0] == "true \\ predicted"

  # The worst errors: errors.jsonl's order (most confident first), escaped user text.
  errors = elements(page, "td", "error")
  assert [e["text"] for e in errors] == [e["text"] for e in wrote["errors"]]
  assert len(errors) == sum(CONFUSION[i][j] for i in range(3) for j in range(3) if i != j)
  assert "<script>" not in page and "&lt;script&gt;" in page
  table = rows_after(page, "Worst errors")
  assert [r[1] for r in table[1:]] == [f"{e['confidence']:.4g}" for e in wrote["errors"]]

  # Data statistics: rows and label counts per split, the fingerprint.
  data = rows_after(page, "<h3>Data</h3>")
  by_split = {r[0]: r for r in data[1:]}
  for split, st in wrote["stats"].items():
    if isinstance(st, dict):
      assert by_split[split][1] == str(st["rows"])
      for label, n in st["label_counts"].items():
        assert f"{label} {n}" in by_split[split][-1]
  assert "feedc0ffee123456" in page

  # Results: the test metrics of results.json.
  results = {r[0]: r[1] for r in rows_after(page, "<h2>Results")}
  assert results["test accuracy"] == f"{14 / 18:.4g}" and results["best step"] == "6"


def test_config_diff_against_the_recorded_recipe(lm_run):
  """A run of configs/tiny.py with overrides: run.json names the recipe, and the diff lists
  exactly the keys overridden on the command line."""
  info = json.loads((lm_run / "run.json").read_text())
  assert info["extra"]["recipe"]["given"] == "configs/tiny.py"
  assert info["extra"]["recipe"]["file"] == str(harness.REPO / "configs/tiny.py")
  path, runs = report.write(lm_run, out=str(lm_run / "r.html"))
  page = path.read_text()
  diff = rows_after(page, "<h3>Config against the recipe configs/tiny.py")
  assert diff[0] == ["key", "recipe", "this run"]
  assert {r[0]: r[2] for r in diff[1:]} == {k: str(v) for k, v in OVERRIDES.items()}
  # An SFT / causal LM run: perplexity curve, no confusion matrix, nothing reported missing.
  assert "eval/perplexity" in series(page) and "cell" not in page
  assert runs[0].missing == [] and runs[0].task == "causal_lm"


def test_config_diff_falls_back_and_says_why(cls_run, tmp_path):
  workdir, _ = cls_run
  page = report.write(workdir)[0].read_text()
  assert "Config against jaxtune&#x27;s defaults" in page
  assert "run.json does not record the recipe" in page
  diff = {r[0]: r[1:] for r in rows_after(page, "<h3>Config against")[1:]}
  assert diff["model.task"] == ["'causal_lm'", "'seq_cls'"] and "train.steps" in diff

  # A recorded recipe that changed since, or is gone.
  recipe = tmp_path / "my_recipe.py"
  shutil.copy(harness.REPO / "configs/tiny.py", recipe)
  from jaxtune import writer

  info = json.loads((workdir / "run.json").read_text())
  info["extra"]["recipe"] = writer.recipe_info(str(recipe))
  (workdir / "run.json").write_text(json.dumps(info))
  recipe.write_text(recipe.read_text().replace("c.train.steps = 60", "c.train.steps = 61"))
  page = report.write(workdir)[0].read_text()
  assert "has changed since the run started" in page
  assert rows_after(page, "<h3>Config against the recipe")[0] == ["key", "recipe", "this run"]
  recipe.unlink()
  page = report.write(workdir)[0].read_text()
  assert "no longer exists" in page and "Config against jaxtune&#x27;s defaults" in page


def test_unfinished_runs_say_what_is_missing(tmp_path):
  crashed = tmp_path / "crashed"
  write_classification_run(crashed, steps=4, finished=False)
  with (crashed / "metrics.jsonl").open("a") as f:
    f.write('{"step": 5, "train/lo')  # killed mid-line
  run = records.load(crashed)
  assert run.status.startswith("stopped at step 4 of 4")
  assert any("no results.json" in m for m in run.missing)
  assert any("1 unreadable line" in m for m in run.missing)
  page = report.write(crashed)[0].read_text()
  box = elements(page, "div", "missing")[0]["text"]
  assert "no results.json" in box and "resumes it" in box
  assert "train/loss" in series(page) and "cell" not in page

  # A live lock: the run is still training.
  (crashed / workdir_lock.LOCK_FILE).write_text(json.dumps(
    {"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
  run = records.load(crashed)
  assert run.status.startswith("in progress (at step 4 of 4") and str(os.getpid()) in run.status

  # A lock left by a process that is gone: stopped, not in progress.
  (crashed / workdir_lock.LOCK_FILE).write_text(json.dumps(
    {"pid": 2**22 + 17, "host": socket.gethostname(), "since": "then"}))
  assert records.load(crashed).status.startswith("stopped at step 4 of 4")

  # Started but nothing logged yet.
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  shutil.copy(crashed / "config.json", fresh / "config.json")
  run = records.load(fresh)
  assert run.status.startswith("stopped before its first logged step")
  assert any("no run.json" in m for m in run.missing) and any("no curves" in m for m in run.missing)
  assert "No metrics logged yet" in report.write(fresh)[0].read_text()


# ------------------------------------------------------------------------------ compare


def test_compare_overlays_runs_and_sets_results_side_by_side(lm_run, cls_run, tmp_path):
  workdir, wrote = cls_run
  other = tmp_path / "other" / "cls"
  write_classification_run(other, steps=4)
  path, runs = report.write(workdir, [other, lm_run], out=str(tmp_path / "cmp.html"))
  page = path.read_text()
  names = [r.name for r in runs]
  assert names == [f"{tmp_path.name}/cls", "other/cls", "tiny_lm"]  # distinct, as short as that allows
  shown = series(page)
  for name in names:
    assert f"{name}: train/loss" in shown and f"{name}: eval/loss" in shown
  assert shown[f"{names[0]}: train/loss"] == 6 and shown["other/cls: train/loss"] == 4
  assert "tiny_lm: eval/perplexity" in shown
  table = rows_after(page, "<h2>Results")
  assert table[0] == ["", *names]
  acc = next(r for r in table if r[0] == "test accuracy")
  assert acc[1:] == [f"{14 / 18:.4g}", f"{14 / 18:.4g}", "-"]
  between = {r[0]: r[1:] for r in rows_after(page, "Config differences between the runs")[1:]}
  assert between["train.steps"] == ["6", "4", "4"]
  assert between["model.task"] == ["'seq_cls'", "'seq_cls'", "'causal_lm'"]


# ------------------------------------------------------------------------- paths, outputs


def test_refuses_what_is_not_a_run_naming_the_path(tmp_path, cls_run):
  workdir, _ = cls_run
  with pytest.raises(NotARunError, match=f"--workdir={tmp_path / 'nope'}: no such directory"):
    report.write(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(NotARunError, match="--compare=.*empty: not a `jaxtune train` run"):
    report.write(workdir, [tmp_path / "empty"])
  (tmp_path / "study" / "trials" / "0").mkdir(parents=True)
  with pytest.raises(NotARunError, match="a `jaxtune tune` study.*trials/0"):
    report.write(tmp_path / "study")
  assert not (workdir / "report.html").exists()  # refused before anything was written


def test_output_rules(cls_run, tmp_path):
  workdir, _ = cls_run
  path = report.write(workdir)[0]
  manifest = json.loads((workdir / outputs.MANIFEST).read_text())
  assert manifest["files"]["report.html"]["by"] == "jaxtune report"
  report.write(workdir)  # a derived file: the rerun replaces it unasked
  path.write_text("my notes")  # edited by hand: no longer ours
  with pytest.raises(OutputError, match="report.html: exists and was not written by jaxtune"):
    report.write(workdir)
  report.write(workdir, overwrite=True)
  for name in ("metrics.jsonl", "config.json", "results.json"):
    with pytest.raises(OutputError, match="input of this command"):
      report.write(workdir, out=str(workdir / name), overwrite=True)
  elsewhere = tmp_path / "mine.html"
  elsewhere.write_text("someone's page")
  with pytest.raises(OutputError, match="--out=.*mine.html: exists"):
    report.write(workdir, out=str(elsewhere))
  report.write(workdir, out=str(elsewhere), overwrite=True)
  assert "Run report" in elsewhere.read_text()
  assert not (tmp_path / outputs.MANIFEST).exists()  # a user's folder gets only the page


def test_cli_one_line_error_and_report(lm_run, tmp_path):
  done = harness.run("report", f"--workdir={tmp_path / 'missing'}")
  harness.expect_error(done, "report", str(tmp_path / "missing"), "no such directory")
  done = harness.run("report", f"--workdir={lm_run}", f"--out={tmp_path / 'r.html'}")
  assert done.returncode == 0, str(done)
  assert f"tiny_lm: finished\nreport: {tmp_path / 'r.html'}" in done.stdout
  assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
