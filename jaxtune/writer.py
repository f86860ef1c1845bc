"""What a run leaves in its workdir: metrics, TensorBoard events, run/config records, MFU.

Workdir layout (written by process 0 only; other processes' writers are no-ops):

  metrics.jsonl  one JSON object per ``MetricWriter.write``: ``{"step": 12, "train/loss": 2.31}``
  text.jsonl     one JSON object per ``write_text``: ``{"step": 12, "tag": ..., "text": ...}``
  tb/            TensorBoard event files (tensorboardX): the same scalars and texts, the hparams
                 (declared at the start, ended with the final metrics) and images such as the
                 confusion matrices
  run.json       versions, devices, mesh, git commit, data fingerprint, start time, recipe
  config.json    the resolved config (written once a resume's checks and restore succeed)
  jaxtune.lock   while a process trains here: its pid, host and start (jaxtune.workdir_lock)

Non-finite metric values are written to JSON as ``null`` (NaN, +Inf and -Inf alike: strict JSON
has no spelling for them, and null keeps the column numeric for readers such as pandas);
TensorBoard gets the real float. ``metrics.jsonl`` is the crash-proof record (each line reaches
the OS when written); TensorBoard events are flushed every 10 s and on ``flush``/``close``.

Resume: the driver calls ``truncate_after(restored_step)`` right after constructing the writer.
It drops the lines of both JSONL files with a step above the restored one (written by the
crashed run after its last checkpoint, and about to be recomputed), and writes a TensorBoard
``SessionLog.START`` at ``restored_step + 1`` so TensorBoard purges its orphaned points too. A
reader of a workdir that was not truncated should keep, for each step, the last line.

Remote workdirs (``gs://...``, any URL epath reads): object stores cannot append, so the JSONL
files live in a local staging directory (seeded from the workdir's copies on resume) and whole
copies are uploaded at most every ``UPLOAD_EVERY_S`` seconds, on ``flush`` and on ``close``; a
hard kill loses at most that much of the record. TensorBoard writes ``gs://`` through
tensorboardX (needs ``google-cloud-storage``), run.json/config.json through epath.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

import jaxtune
from jaxtune import storage

METRICS_FILE = "metrics.jsonl"
TEXT_FILE = "text.jsonl"
TB_DIR = "tb"
UPLOAD_EVERY_S = 30.0  # remote workdirs: how stale the uploaded JSONL files may get


def is_remote(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a URL (gs://, s3://): no appends, no renames, no local directories."""
  return "://" in os.fspath(path)


def _finite_or_none(value: Any) -> float | None:
  value = float(np.asarray(value))
  return value if math.isfinite(value) else None


def _plain(v: Any) -> bool | int | float | str:
  """An hparam value TensorBoard can show: bool/int/float/str as they are, others as text."""
  if isinstance(v, (bool, int, float, str)):
    return v
  if isinstance(v, np.generic):
    return v.item()
  return str(v)


def _write_atomic(path: str, text: str) -> None:
  if is_remote(path):
    epath.Path(path).write_text(text)  # an object appears whole or not at all
    return
  # A crash mid-write must leave either the old file or the new one, never half of one.
  tmp = f"{path}.tmp{os.getpid()}"
  with storage.translate(path):
    try:
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except OSError:
      with contextlib.suppress(OSError):  # a full disk must not keep a partial copy
        os.remove(tmp)
      raise


def _truncate_jsonl(path: str, step: int) -> int:
  """Keeps lines with ``step <= step``; drops unparsable lines (a torn final write). Returns drops."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        ok = json.loads(line)["step"] <= step
      except (ValueError, KeyError, TypeError):
        ok = False
      if ok:
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    _write_atomic(path, "".join(kept))
  return dropped


def _open_append(path: str):
  """Line-buffered append (each line reaches the OS at once, so a crash loses nothing written).

  A crash mid-line leaves a torn last line; start on a fresh line so that only it is unreadable.
  """
  torn = False
  if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"
  f = open(path, "a", buffering=1)
  if torn:
    f.write("\n")
  return f


class MetricWriter:
  """Appends scalars to ``metrics.jsonl`` and TensorBoard; see module doc for the layout.

  Args:
    workdir: run directory (created if missing).
    tensorboard: also write TensorBoard events under ``workdir/tb``.
    enabled: whether this process writes; default: only process 0.
    trackers: MLflow / W&B trackers (``jaxtune.trackers``) that every write, text, hparams
      and ``close`` is forwarded to.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    tensorboard: bool = True,
    enabled: bool | None = None,
    trackers: Sequence[Any] = (),
  ):
    self.workdir = os.fspath(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.trackers = list(trackers) if self.enabled else []
    self._last_step = 0
    self._tb = None
    self._jsonl = None
    self._text = None
    self._hparams_started = False
    self._remote = is_remote(self.workdir)
    self._uploaded_at = time.monotonic()
    if not self.enabled:
      return
    # Where the JSONL files are appended: the workdir, or a local stage for a remote one.
    self._dir = self.workdir
    epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
    if self._remote:
      self._dir = tempfile.mkdtemp(prefix="jaxtune_metrics_")
      for name in (METRICS_FILE, TEXT_FILE):
        remote = epath.Path(self.workdir) / name
        if remote.exists():
          with open(os.path.join(self._dir, name), "wb") as f:
            f.write(remote.read_bytes())
    self._jsonl = _open_append(os.path.join(self._dir, METRICS_FILE))
    if tensorboard:
      from tensorboardX import SummaryWriter  # heavy import (protobuf); only when used

      self._tb = SummaryWriter(logdir=os.path.join(self.workdir, TB_DIR), flush_secs=10)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes ``{"step": step, **metrics}`` (namespaced keys like ``train/loss``)."""
    step = int(step)
    self._last_step = step
    if not self.enabled:
      return
    values = {str(k): float(np.asarray(v)) for k, v in metrics.items()}
    record = {"step": step, **{k: v if math.isfinite(v) else None for k, v in values.items()}}
    with storage.translate(os.path.join(self._dir, METRICS_FILE)):
      self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, step)
    for t in self.trackers:
      t.write(step, values)
    self._maybe_upload()

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Writes free text (samples, config dumps) to ``text.jsonl`` and TensorBoard's text tab."""
    if not self.enabled:
      return
    if self._text is None:
      self._text = _open_append(os.path.join(self._dir, TEXT_FILE))
    self._text.write(json.dumps({"step": int(step), "tag": tag, "text": text}) + "\n")
    if self._tb is not None:
      self._tb.add_text(tag, text, int(step))
    for t in self.trackers:
      t.write_text(int(step), tag, text)

  @property
  def has_tensorboard(self) -> bool:
    """Whether this writer writes TensorBoard events (process 0, `tensorboard` in report_to)."""
    return self.enabled and self._tb is not None

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """Writes an ``(H, W, 3)`` uint8 image (e.g. ``plots.figure_rgb``) to TensorBoard's images
    tab, PNG-encoded by tensorboardX; the JSONL files keep scalars and text only."""
    if not self.enabled or self._tb is None:
      return
    self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

  def start_hparams(self, hparams: Mapping[str, Any], metric_names: Sequence[str]) -> None:
    """Declares the run to TensorBoard's HPARAMS tab at its start, with ``metric_names`` (scalar
    tags such as ``eval/accuracy``) as its columns.

    Written at the start, the run shows in the tab while it trains, and stays there if it is
    killed, preempted or pruned before ``write_hparams`` ends it: the columns show the last
    value each tag has so far. TensorBoard keeps the first experiment a run declares (a resumed
    run declares the same one again), so every metric the run will write must be named now.
    Written into the main run (not a sub-run as tensorboardX's ``add_hparams`` does), so the
    dashboard links the hparams to every scalar of this run.
    """
    if not self.enabled or self._tb is None:
      return
    from tensorboardX.summary import hparams as hparams_summary

    experiment, session_start, _ = hparams_summary(
      {str(k): _plain(v) for k, v in hparams.items()}, {str(k): 0.0 for k in metric_names}
    )
    for summary in (experiment, session_start):
      self._tb.file_writer.add_summary(summary, self._last_step)
    self._hparams_started = True

  def write_hparams(
    self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int | None = None
  ) -> None:
    """Ends the run's HPARAMS entry: ``metrics`` values as scalars at ``step`` (default: the
    last step written) and the session's end (status: success).

    Without an earlier ``start_hparams``, declares ``hparams`` with ``metrics`` as the columns
    first. Values that are not bool/int/float/str are stringified.
    """
    if not self.enabled:
      return
    for t in self.trackers:
      t.write_hparams(hparams, metrics, self._last_step if step is None else int(step))
    if self._tb is None:
      return
    from tensorboardX.summary import hparams as hparams_summary

    if not self._hparams_started:
      self.start_hparams(hparams, list(metrics))
    values = {str(k): _finite_or_none(v) for k, v in metrics.items()}
    step = self._last_step if step is None else int(step)
    for k, v in values.items():
      if v is not None:
        self._tb.add_scalar(k, v, step)
    *_, session_end = hparams_summary({}, {})
    self._tb.file_writer.add_summary(session_end, step)

  def truncate_after(self, step: int) -> None:
    """Forgets everything logged for steps > ``step`` (call on resume; see module doc)."""
    self._last_step = int(step)
    if not self.enabled:
      return
    # The files are replaced, not edited in place: reopen so later writes reach the new ones.
    had_text = self._text is not None
    for f in (self._jsonl, self._text):
      if f is not None:
        f.close()
    for name in (METRICS_FILE, TEXT_FILE):
      _truncate_jsonl(os.path.join(self._dir, name), int(step))
    self._jsonl = _open_append(os.path.join(self._dir, METRICS_FILE))
    self._text = _open_append(os.path.join(self._dir, TEXT_FILE)) if had_text else None
    self._upload()
    if self._tb is not None:
      from tensorboardX.proto.event_pb2 import Event, SessionLog

      # TensorBoard drops points with step >= this event's step from earlier event files.
      self._tb.file_writer.add_event(
        Event(
          step=int(step) + 1, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START)
        )
      )

  def flush(self) -> None:
    for f in (self._jsonl, self._text):
      if f is not None:
        f.flush()
    if self._tb is not None:
      self._tb.flush()
    self._upload()

  def _maybe_upload(self) -> None:
    if self._remote and time.monotonic() - self._uploaded_at >= UPLOAD_EVERY_S:
      self._upload()

  def _upload(self) -> None:
    """Remote workdirs: replace the workdir's JSONL files with whole copies of the stage."""
    if not (self._remote and self.enabled):
      return
    for f, name in ((self._jsonl, METRICS_FILE), (self._text, TEXT_FILE)):
      if f is not None:
        f.flush()
        with open(os.path.join(self._dir, name), "rb") as local:
          (epath.Path(self.workdir) / name).write_bytes(local.read())
    self._uploaded_at = time.monotonic()

  def close(self) -> None:
    self.flush()  # uploads a remote workdir's files
    for f in (self._jsonl, self._text):
      if f is not None:
        f.close()
    self._jsonl = self._text = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    trackers, self.trackers = self.trackers, []
    for t in trackers:  # after the flush: they log the workdir's final files
      t.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ------------------------------------------------------------------------------ run records


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git(*args: str) -> str | None:
  """Output of ``git <args>`` in the jaxtune source tree; None if not a checkout or no git."""
  try:
    out = subprocess.run(
      ["git", *args],
      cwd=os.path.dirname(os.path.abspath(jaxtune.__file__)),
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


def run_info(
  *,
  config_json: str,
  mesh_shape: Mapping[str, int],
  data_fingerprint: str,
  extra: Mapping[str, Any],
) -> dict[str, Any]:
  """The record ``write_run_info`` writes; separate so the driver can also log it."""
  devices = jax.devices()
  commit = _git("rev-parse", "HEAD") or None
  status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
  try:
    config = json.loads(config_json)
  except ValueError:
    config = config_json  # keep what we were given rather than fail the run
  return {
    "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "versions": {
      "jaxtune": jaxtune.__version__,
      "jax": jax.__version__,
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "optax": _version("optax"),
      "orbax-checkpoint": _version("orbax-checkpoint"),
      "python": platform.python_version(),
    },
    "python_executable": sys.executable,
    "hostname": platform.node(),
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
    "device_count": jax.device_count(),
    "local_device_count": jax.local_device_count(),
    "process_count": jax.process_count(),
    "mesh": {str(k): int(v) for k, v in mesh_shape.items()},
    "git_commit": commit,
    "git_dirty": bool(status) if status is not None else None,
    "data_fingerprint": data_fingerprint,
    "config": config,
    "extra": dict(extra),
  }


def write_run_info(
  workdir: str | os.PathLike,
  *,
  config_json: str,
  mesh_shape: Mapping[str, int],
  data_fingerprint: str,
  extra: Mapping[str, Any],
) -> dict[str, Any]:
  """Writes ``workdir/run.json`` (process 0 only) and returns the record."""
  info = run_info(
    config_json=config_json, mesh_shape=mesh_shape, data_fingerprint=data_fingerprint, extra=extra
  )
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    _write_atomic(os.path.join(workdir, "run.json"), json.dumps(info, indent=2, default=str) + "\n")
  return info


def recipe_info(recipe: str) -> dict[str, Any]:
  """What run.json records of the recipe a run started from (`configs/x.py[:variant]` as
  given): its absolute path and variant, so `jaxtune report` can load it from anywhere, and the
  SHA-256 of its text then, so the report can say when the file has changed since."""
  file, _, variant = recipe.partition(":")
  path = os.path.abspath(file)
  try:
    with open(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
  except OSError:
    digest = None
  return {"given": recipe, "file": path, "variant": variant, "sha256": digest}


def append_run_info(workdir: str | os.PathLike, key: str, entry: Any) -> None:
  """Appends ``entry`` to the list ``key`` of ``workdir/run.json`` (process 0 only), e.g. the
  config changes a resumed run accepted."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / "run.json"
  info = json.loads(path.read_text()) if path.exists() else {}
  info.setdefault(key, []).append(entry)
  _write_atomic(os.path.join(workdir, "run.json"), json.dumps(info, indent=2, default=str) + "\n")


def write_config(workdir: str | os.PathLike, config: Any) -> None:
  """Writes the resolved ``ml_collections.ConfigDict`` to ``workdir/config.json`` (process 0)."""
  if jax.process_index() != 0:
    return
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  _write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2) + "\n")


# ------------------------------------------------------------------------------ throughput

# bf16 dense peak FLOP/s per device, matched in order on the lower-cased `device.device_kind`
# (e.g. "NVIDIA H100 80GB HBM3", "TPU v5 lite"); more specific patterns come first.
_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
  ("h100 pcie", 756e12),
  ("h100 nvl", 835e12),
  ("h100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
  ("h200", 989e12),  # also GH200
  ("a100", 312e12),
  ("tpu v4", 275e12),
  ("tpu v5 lite", 197e12),
  ("tpu v5e", 197e12),
  ("tpu v5p", 459e12),
  ("tpu v5", 459e12),  # v5p reports plain "TPU v5"
  ("tpu v6 lite", 918e12),
  ("tpu v6e", 918e12),
)


def device_peak_flops(device: Any) -> float | None:
  """bf16 dense peak FLOP/s of one ``jax.Device``; None for CPUs and unknown kinds."""
  kind = str(getattr(device, "device_kind", "")).lower()
  for pattern, flops in _PEAK_FLOPS:
    if pattern in kind:
      return flops
  return None


def mfu(flops_per_step: float, step_time_s: float, n_devices: int, peak: float) -> float:
  """Model FLOPs utilisation: achieved FLOP/s over the devices' combined peak."""
  if step_time_s <= 0 or n_devices <= 0 or peak <= 0:
    raise ValueError(
      f"need positive step time, device count and peak, got {step_time_s}, {n_devices}, {peak}"
    )
  return flops_per_step / (step_time_s * n_devices * peak)
