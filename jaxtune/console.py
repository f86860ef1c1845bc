"""The console: what a person watching a jaxtune command reads, written through one object.

The progress bar, the line per evaluation, log records and errors all go through `CONSOLE`,
which knows whether the bar's line is open (on a terminal the bar redraws one line with `\\r`
and leaves it unended) and ends it before writing anything else, so no line runs into the bar.
Off a terminal (CI logs, files) the bar prints plain lines (`ProgressBar`).

`configure_logging` is what every subcommand runs (`jaxtune.cli.run_app`): quiet by default
(warnings and errors only, libraries' INFO such as JAX's TPU probe and orbax's file operations
hidden), absl's `--verbosity=0` shows INFO and `--verbosity=1` DEBUG, from every library.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

# The metrics shown beside the best metric on an evaluation line and in the final table are the
# objective's (`Objective.line_metrics`, `table_metrics`; per-class ones stay in results.json).
_SHORT = {"f1_macro": "f1", "precision_macro": "precision", "recall_macro": "recall"}


class Console:
  """Writes lines to stderr (the bar, evaluations, logs) or stdout (results), ending the bar's
  open line first. The streams are looked up at each write, so redirection (and pytest's
  capture) after construction still works. Writes hold a lock: orbax logs from its save
  threads while the main thread draws the bar."""

  def __init__(self, err: TextIO | None = None, out: TextIO | None = None):
    self._err, self._out = err, out
    self._open: TextIO | None = None  # the stream whose last line is unended (the bar's)
    self._lock = threading.RLock()

  @property
  def err(self) -> TextIO:
    return self._err if self._err is not None else sys.stderr

  @property
  def out(self) -> TextIO:
    return self._out if self._out is not None else sys.stdout

  def end_line(self) -> None:
    """End the bar's line if it is open, so what follows starts on a line of its own."""
    with self._lock:
      if self._open is not None:
        stream, self._open = self._open, None
        stream.write("\n")
        stream.flush()

  def print(self, text: str = "", *, out: bool = False) -> None:
    """One or more whole lines: on stderr, or on stdout with `out` (results a script reads)."""
    with self._lock:
      self.end_line()
      stream = self.out if out else self.err
      stream.write(text + "\n")
      stream.flush()

  def _write_partial(self, stream: TextIO, text: str) -> None:
    with self._lock:
      if text == "\n" and self._open is not stream:
        return  # the bar ends a line that something else has ended already
      if self._open is not None and self._open is not stream:
        self.end_line()
      stream.write(text)
      self._open = None if text.endswith("\n") else stream

  def progress_bar(self, total_steps: int, **kwargs):
    """A `ProgressBar` drawing on stderr through this console."""
    return ProgressBar(total_steps, stream=_BarStream(self), **kwargs)


class _BarStream:
  """The stream a progress bar writes to: stderr, with the console told where lines end."""

  def __init__(self, console: Console):
    self._console = console

  def write(self, text: str) -> None:
    self._console._write_partial(self._console.err, text)

  def flush(self) -> None:
    self._console.err.flush()

  def isatty(self) -> bool:
    return bool(getattr(self._console.err, "isatty", lambda: False)())


CONSOLE = Console()


# ------------------------------------------------------------------------------------ logging


class _Handler(logging.Handler):
  """Log records as lines through `CONSOLE` (stderr)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      CONSOLE.print(self.format(record))
    except Exception:  # noqa: BLE001 - logging must never take the program down
      self.handleError(record)


class _Formatter(logging.Formatter):
  """Quiet: `warning: message` (`warning [lib]: message` from other libraries than jaxtune;
  jaxtune's INFO progress as the bare message). Verbose (--verbosity >= 0): `I 13:21:20.797 logger.name: message`, as absl's lines have a
  level letter and a time."""

  def __init__(self, verbose: bool):
    super().__init__()
    self.verbose = verbose

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage().rstrip()  # a captured warnings.warn ends with a newline
    if record.exc_info:
      message += "\n" + self.formatException(record.exc_info)
    name = record.name
    if name == "absl":  # orbax (and others) log through absl.logging: name the package instead
      parts = Path(record.pathname).parts
      if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
        name = parts[parts.index("site-packages") + 1]
    if self.verbose:
      t = time.strftime("%H:%M:%S", time.localtime(record.created))
      return f"{record.levelname[0]} {t}.{int(record.msecs):03d} {name}: {message}"
    level = record.levelname.lower()
    if name == "jaxtune" or name.startswith("jaxtune."):
      return message if record.levelno == logging.INFO else f"{level}: {message}"
    return f"{level} [{name.split('.')[0]}]: {message}"


# jaxtune loggers whose INFO records are progress a person follows (a search's trials and PBT
# generations): shown by default, as the console's own lines are.
_PROGRESS_LOGGERS = ("jaxtune.tune",)
_raised: set[str] = set()


def configure_logging(verbosity: int | None = None) -> None:
  """Route every log record through `CONSOLE` at the level asked for.

  `verbosity` is absl's scale: None (the flag not given) shows warnings and errors, and the
  progress a search logs; 0 INFO, 1 DEBUG, -1 WARNING, -2 ERROR. Python warnings (`warnings.warn`) are logged too,
  so they cannot run into the progress bar either. Loggers given a level of their own (absl's
  --logger_levels=orbax:INFO) keep it.
  """
  level = logging.WARNING if verbosity is None else _standard_level(verbosity)
  root = logging.getLogger()
  for h in list(root.handlers):  # absl's handler (app.run installs it) or a basicConfig one
    root.removeHandler(h)
  handler = _Handler()
  handler.setFormatter(_Formatter(verbose=verbosity is not None and verbosity >= 0))
  root.addHandler(handler)
  root.setLevel(level)
  for name in _PROGRESS_LOGGERS:
    logger = logging.getLogger(name)
    if verbosity is None and logger.level == logging.NOTSET:  # not set by --logger_levels
      logger.setLevel(logging.INFO)
      _raised.add(name)
    elif verbosity is not None and name in _raised:
      logger.setLevel(logging.NOTSET)
      _raised.discard(name)
  logging.captureWarnings(True)


def _standard_level(verbosity: int) -> int:
  if verbosity >= 1:
    return logging.DEBUG - (verbosity - 1)  # absl: --verbosity=2 and up are finer vlog levels
  return {0: logging.INFO, -1: logging.WARNING, -2: logging.ERROR}.get(verbosity, logging.CRITICAL)


# ------------------------------------------------------------------------------ formatting


def number(value: Any) -> str:
  """A metric as a person reads it: 4 significant digits, counts and large values whole."""
  v = float(value)
  if not math.isfinite(v):
    return str(v)
  if (v == int(v) and abs(v) >= 1) or abs(v) >= 1e4:
    return f"{v:.0f}"
  return f"{v:.4g}"


def _objective_metrics(task: str, which: str) -> tuple[str, ...]:
  from jaxtune import objectives  # JAX: only once a run reports, not when the CLI starts

  objective = objectives.REGISTRY.get(task)
  return getattr(objective, which) if objective else ("loss",)


class EvalLine:
  """Formats one line per evaluation: the objective metric with the best value so far, then
  the task's main metrics, e.g.
  `eval step 200 | accuracy 0.812 (best 0.820 @150) | f1 0.80 | loss 0.41`.

  `best`/`best_step` start from a resumed run's record (`monitor.EarlyStopping`'s state)."""

  def __init__(
    self, metric: str, mode: str, task: str, best: float | None = None, best_step: int | None = None
  ):
    self.metric, self.mode, self.task = metric.removeprefix("eval/"), mode, task
    self.best, self.best_step = best, best_step

  def _better(self, value: float) -> bool:
    if self.best is None or not math.isfinite(self.best):
      return math.isfinite(value)
    return value < self.best if self.mode == "min" else value > self.best

  def __call__(self, step: int, scalars: Mapping[str, float], *, track: bool = True) -> str:
    """The line for an evaluation at `step` (`scalars` with or without the eval/ prefix);
    `track=False` for one that cannot become the best checkpoint (before training)."""
    values = {k.removeprefix("eval/"): v for k, v in scalars.items()}
    parts = [f"eval step {step}"]
    value = values.get(self.metric)
    if value is not None:
      note = ""
      if track and self._better(float(value)):
        self.best, self.best_step = float(value), step
        note = " (best)"
      elif self.best is not None:
        note = f" (best {number(self.best)} @{self.best_step})"
      parts.append(f"{_SHORT.get(self.metric, self.metric)} {number(value)}{note}")
    for name in _objective_metrics(self.task, "line_metrics"):
      if name != self.metric and name in values:
        parts.append(f"{_SHORT.get(name, name)} {number(values[name])}")
    return " | ".join(parts)


def table(columns: Mapping[str, Mapping[str, Any]], rows: Sequence[str]) -> str:
  """An aligned text table: one row per metric in `rows` (those some column has), one column
  per named mapping of metric -> value, e.g. {'validation': {...}, 'test': {...}}. A row's
  values have the same decimals (4; none for counts), so their digits line up."""
  rows = [r for r in rows if any(r in col for col in columns.values())]
  if not rows or not columns:
    return ""
  names = [_SHORT.get(r, r) for r in rows]
  left = max(len(n) for n in names)

  def cell(row: str, col: Mapping[str, Any]) -> str:
    if row not in col:
      return "-"
    values = [float(c[row]) for c in columns.values() if row in c]
    whole = all(math.isfinite(v) and v == int(v) for v in values) or max(map(abs, values)) >= 1e4
    return (
      number(col[row]) if whole or not math.isfinite(float(col[row])) else f"{float(col[row]):.4f}"
    )

  cells = {c: [cell(r, col) for r in rows] for c, col in columns.items()}
  widths = {c: max(len(c), *(len(x) for x in cells[c])) for c in columns}
  lines = [" " * left + "".join(f"  {c:>{widths[c]}}" for c in columns)]
  for i, name in enumerate(names):
    lines.append(f"{name:<{left}}" + "".join(f"  {cells[c][i]:>{widths[c]}}" for c in columns))
  return "\n".join(lines)


def duration(seconds: float) -> str:
  seconds = int(max(0, round(seconds)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def run_summary(result: Mapping[str, Any], config, workdir, seconds: float) -> str:
  """What `jaxtune train` prints at the end: the step reached, the best checkpoint, its
  validation and test metrics as a table, and where the results are. For example
  ```
  done: step 60 in 0:25; best checkpoint: step 60 by loss (1.895)
              validation   test
  loss             1.895  1.901
  perplexity       6.653  6.694
  results: /runs/a/results.json, misclassified test examples: /runs/a/errors.jsonl
  ```"""
  from etils import epath

  results, workdir = result["results"], epath.Path(workdir)
  metric = config.checkpoint.best_metric.removeprefix("eval/")
  columns = {
    name: {k: v for k, v in results[key].items() if isinstance(v, int | float)}
    for name, key in (("validation", "val"), ("test", "test"))
    if key in results
  }
  best = columns.get("validation", {}).get(metric)
  head = f"done: step {result['step']} in {duration(seconds)}"
  if result.get("stopped_early"):
    head += " (stopped early)"
  head += f"; best checkpoint: step {results['best_step']} by {_SHORT.get(metric, metric)}"
  if best is not None:
    head += f" ({number(best)})"
  rows = list(_objective_metrics(config.model.task, "table_metrics"))
  if metric not in rows:
    rows.insert(0, metric)
  where = [f"results: {workdir / 'results.json'}"]
  if (workdir / "errors.jsonl").exists():
    where.append(f"misclassified test examples: {workdir / 'errors.jsonl'}")
  if config.export.enabled:
    where.append(f"export: {workdir / 'export'}")
  return "\n".join(x for x in (head, table(columns, rows), ", ".join(where)) if x)


# ------------------------------------------------------------------------------ progress bar


def _now() -> float:
  """Monotonic clock of the progress bar; a function so tests can replace it."""
  return time.monotonic()


def _fmt_rate(x: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.1f}{unit}"
  return f"{x:.0f}"


class ProgressBar:
  """One console line: step/total, steps/s, ETA, loss, tokens/s; no tqdm.

  On a TTY the line is redrawn in place with ``\\r`` at most every ``min_interval_s``; otherwise
  (CI logs, files) a plain line is printed every ``log_interval_s``. The final step is always
  shown. Rates are measured from the first ``update``, so compilation time is not averaged in.

  Args:
    total_steps: the step the run ends at.
    initial_step: the step a resumed run starts from.
    loss_key / tokens_per_s_key: metrics keys shown, if present in ``update``'s metrics.
  """

  def __init__(
    self,
    total_steps: int,
    *,
    initial_step: int = 0,
    loss_key: str = "train/loss",
    tokens_per_s_key: str = "train/tokens_per_s",
    min_interval_s: float = 0.2,
    log_interval_s: float = 30.0,
    stream: Any = None,
  ):
    self.total_steps = int(total_steps)
    self.loss_key, self.tokens_per_s_key = loss_key, tokens_per_s_key
    self._stream = stream
    self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self._interval = min_interval_s if self._tty else log_interval_s
    self._step = int(initial_step)
    self._metrics: dict[str, Any] = {}
    self._t0: float | None = None
    self._step0 = int(initial_step)
    self._last_draw = -math.inf
    self._drawn_step: int | None = None
    self._width = 0
    self._closed = False

  @property
  def stream(self) -> Any:
    # Looked up at use, so redirection (and pytest's capture) after construction still works.
    return self._stream if self._stream is not None else sys.stderr

  def line(self) -> str:
    now = _now()
    parts = [f"step {self._step}/{self.total_steps}"]
    if self.total_steps > 0:
      parts[0] += f" ({100.0 * self._step / self.total_steps:.1f}%)"
    done = self._step - self._step0
    if self._t0 is not None and done > 0 and now > self._t0:
      rate = done / (now - self._t0)
      parts.append(f"{rate:.2f} it/s")
      parts.append(f"ETA {duration(int(max(0, self.total_steps - self._step) / rate))}")
    loss = self._metrics.get(self.loss_key)
    if loss is not None:
      parts.append(f"loss {float(np.asarray(loss)):.4f}")
    tps = self._metrics.get(self.tokens_per_s_key)
    if tps is not None:
      parts.append(f"{_fmt_rate(float(np.asarray(tps)))} tok/s")
    return " | ".join(parts)

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    """Records progress; redraws only if the throttle interval has passed or at the end."""
    now = _now()
    if self._t0 is None:
      self._t0, self._step0 = now, int(step)
    self._step = int(step)
    if metrics:
      self._metrics.update(metrics)
    if now - self._last_draw >= self._interval or self._step >= self.total_steps:
      self._draw(now)

  def _draw(self, now: float) -> None:
    self._last_draw, self._drawn_step = now, self._step
    text = self.line()
    if self._tty:
      # Pad over the previous, possibly longer, line instead of relying on terminal escapes.
      self.stream.write("\r" + text.ljust(self._width))
      self._width = len(text)
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self._t0 is not None and self._drawn_step != self._step:
      self._draw(_now())  # the last state must be visible
    if self._tty and self._drawn_step is not None:
      self.stream.write("\n")
      self.stream.flush()

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
