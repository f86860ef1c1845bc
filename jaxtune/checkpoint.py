"""Checkpoints for the training engine: async orbax saves, retention, safe resume, preemption.

Design
------
One orbax ``CheckpointManager`` over ``directory``; each step is a directory ``<step>/`` with two
items: ``state`` (the pytree of sharded jax arrays: params, optimizer state, RNG key, averaged
weights; ``StandardSave``) and ``meta`` (JSON ``{"meta": <driver's meta>, "metrics": <metrics>}``).

* **Retention is ours, not orbax's.** The manager keeps everything (``max_to_keep=None``) and
  ``_prune`` deletes what is neither among the last ``keep_last`` nor among the best ``keep_best``
  by ``metrics[best_metric]``; a step can be both. A checkpoint whose metrics lack the best
  metric, or hold a non-finite value, is never "best". Reasons: orbax's ``BestN`` keeps
  checkpoints lacking the metric whenever there are few checkpoints, and its preservation
  policies do not exist in orbax 0.11 (which pyproject allows). One directory keeps the
  "latest" and "best" views from disagreeing about what exists.
* **Nothing is deleted until something newer is committed.** Pruning runs only after the previous
  async save has finished (at the start of the next ``save``, in ``wait`` and ``close``), and
  counts only complete checkpoints, so a crash mid-save always leaves the newest committed one.
* **Completeness.** Orbax (0.11 to 0.12) writes into ``<step>.orbax-checkpoint-tmp[-N]`` and
  renames to ``<step>`` on commit (local/POSIX paths); on GCS it writes in place and adds
  ``commit_success.txt`` last. Either way ``commit_timestamp_nsecs`` is written into the step's
  ``_CHECKPOINT_METADATA`` just before the commit (0.12 also writes ``commit_success.txt`` before
  the rename). Orbax already ignores tmp directories (and deletes them at start-up with
  ``cleanup_tmp_directories``); on top of that a step counts as complete only if it has
  ``commit_success.txt`` or a commit timestamp. So a process SIGKILLed during an async save
  leaves a tmp directory, or on GCS an unmarked one, and both are skipped.
* **Corrupt but committed** (truncated files, disk trouble, flipped bytes that orbax reads
  without noticing: each checkpoint's meta record holds a checksum of every array, verified at
  restore; see "checksums" below): ``restore_latest`` logs a warning
  naming the directory and falls back to the previous complete step. If *no* checkpoint can be
  read it raises the newest error instead of returning None, so a config/shape mismatch never
  silently restarts training from scratch. Steps found unreadable (or incomplete) are replaced
  when the same step is saved again, and removed once a newer checkpoint is committed.
* **Multi-process.** Every method must be called by all processes with the same arguments
  (orbax synchronises hosts inside save/restore/delete). Every decision here is deterministic
  given the files on disk, except the wall-clock trigger of ``should_save``: there process 0's
  clock decides and the answer is broadcast, because hosts that disagree about saving deadlock.

* **Full or read-only disks** raise one ``StorageError`` naming the path (``jaxtune.storage``);
  the directory is probed before each save, so orbax's background writer does not start on a
  disk that refuses writes, and committed checkpoints are never touched by a failed save.

Stopping on SIGTERM/SIGINT at a step every process agrees on is ``jaxtune.preemption``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxtune import errors, storage

log = logging.getLogger(__name__)

# On-disk names written by orbax (stable since orbax 0.5.11); read directly because reading them
# through the manager (`metadata(step)`) also loads every array's metadata.
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
_COMMIT_SUCCESS_FILE = "commit_success.txt"


class _OneLineOrbaxErrors(logging.Filter):
  """Orbax logs a failed background save with its traceback from each of its threads (three or
  four for one full disk), then raises the same error in `wait_until_finished`, where
  `Checkpointer` reports it once (a StorageError, or a bug with its traceback). The logged
  copies keep their message and lose the traceback."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


logging.getLogger("absl").addFilter(_OneLineOrbaxErrors())  # orbax logs through absl.logging


def _now() -> float:
  """Monotonic clock for the minutes trigger; a function so tests can replace it."""
  return time.monotonic()


def _json_default(x: Any) -> Any:
  # Drivers naturally put numpy/jax scalars into meta (epoch counters, seeds).
  if isinstance(x, (np.ndarray, np.generic, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f"meta value {x!r} of type {type(x).__name__} is not JSON serializable")


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
  """Metrics as JSON-safe floats; NaN/Inf become None so they can never rank as best."""
  out: dict[str, float | None] = {}
  for key, value in (metrics or {}).items():
    value = float(np.asarray(value))
    out[str(key)] = value if math.isfinite(value) else None
  return out


# ------------------------------------------------------------------------------- checksums
#
# Each checkpoint's meta record holds a checksum of every array of the state, taken from the
# arrays handed to `save` (before the step that follows may donate them, and before an async
# save writes them) and verified after `restore`: orbax reads a file whose bytes were flipped
# without noticing (tensorstore's raw chunks carry no checksum).
#
# Choice for multi-host and async saves: the checksum is a function of each array's *global*
# value, computed where the array lives (one jitted reduction per array, no extra copy to host
# memory) and fetched to the host as two 32-bit words. Per element i with bits b_i it adds
# fmix32(b_i ^ fmix32(i * K + seed)) modulo 2**32 for two seeds; integer sums modulo 2**32 do
# not depend on the order of addition, so the value is the same on every process, for every
# sharding and mesh (a run restored into another mesh verifies too), and process 0's record
# (the one orbax writes) holds the checksum of the whole array, not only of its own shards.
# A changed element changes the sum unless a 64-bit collision occurs.

CHECKSUM_ALGORITHM = "jaxtune-fmix32-sum-v1"
_SEEDS = (0x9E3779B9, 0x85EBCA77)


def _fmix32(h: jax.Array) -> jax.Array:
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


_WORD = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}  # by itemsize


def _checksummed(dtype) -> bool:
  """Whether `_array_checksum` takes this dtype (every real, integer, bool and key dtype)."""
  return (jnp.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jnp.bool_ or
          (dtype.itemsize in _WORD and not jnp.issubdtype(dtype, jnp.complexfloating)))


def _words(x: jax.Array) -> jax.Array:
  """The bits of each element as uint32 (64-bit types folded into one word)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  w = jax.lax.bitcast_convert_type(x, _WORD[x.dtype.itemsize])
  if x.dtype.itemsize == 8:  # bitcast to a narrower type adds a trailing axis of 2 words
    return w[..., 0] ^ _fmix32(w[..., 1] + jnp.uint32(_SEEDS[0]))
  return w.astype(jnp.uint32)


@jax.jit
def _array_checksum(x: jax.Array) -> jax.Array:
  """uint32[2]: the order-independent checksum of `x` described above."""
  w = _words(x)
  index = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(w.ndim)):  # the flat index, modulo 2**32
    index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride)
    stride = (stride * w.shape[axis]) % 2**32
  return jnp.stack([
    jnp.sum(_fmix32(w ^ _fmix32(index * jnp.uint32(0x27D4EB2F) + jnp.uint32(seed))),
            dtype=jnp.uint32)
    for seed in _SEEDS
  ])


def checksums(state: Any) -> dict[str, dict[str, Any]]:
  """{path: {"dtype", "shape", "sum"}} for every array leaf of `state` (see the note above)."""
  entries, sums = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    x = leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
    if not _checksummed(x.dtype):
      continue
    entries.append((jax.tree_util.keystr(path), x))
    sums.append(_array_checksum(x))
  out = {}
  for (path, x), words in zip(entries, jax.device_get(sums), strict=True):
    out[path] = {"dtype": str(x.dtype), "shape": list(x.shape),
                 "sum": "".join(f"{int(v):08x}" for v in words)}
  return out


def _verify(step_dir: epath.Path, record: dict | None, state: Any) -> None:
  """Raises CheckpointCorruptError if a restored array differs from its checksum at save.
  Checkpoints written before checksums existed have none and are not verified."""
  if not record or record.get("algorithm") != CHECKSUM_ALGORITHM:
    return
  saved = record["arrays"]
  now = checksums(state)
  # Only arrays restored as they were saved can be compared (a dtype change is a cast).
  common = [p for p in now if p in saved and (saved[p]["dtype"], saved[p]["shape"]) ==
            (now[p]["dtype"], now[p]["shape"])]
  bad = [p for p in common if saved[p]["sum"] != now[p]["sum"]]
  if bad:
    raise CheckpointCorruptError(
      f"{step_dir}: {len(bad)} array(s) differ from the checksum written when it was saved "
      f"(first: state{bad[0]}); its files were changed or damaged on disk"
    )
  if saved and not common:
    log.warning("checkpoint %s: no restored array matches its recorded checksums; not verified",
                step_dir)


class Checkpointer:
  """Saves, retains and restores training checkpoints under ``directory`` (see module doc).

  Args:
    directory: root directory (local path or any path orbax/etils understand, e.g. ``gs://``).
    save_every_steps: ``should_save`` is true at steps that are positive multiples of this;
      0 disables the step trigger.
    save_every_minutes: ``should_save`` is true once this much wall time has passed since the
      last save (or since construction); 0 disables the time trigger.
    keep_last: how many of the newest complete checkpoints to keep (at least 1: resume needs it).
    keep_best: how many of the best checkpoints by ``metrics[best_metric]`` to keep (0: none).
    best_metric: metrics key ranking checkpoints, e.g. ``"eval/loss"``.
    best_mode: ``"min"`` or ``"max"``.
    async_save: write in background threads; ``save`` returns once arrays are copied to host.
    time_check_every_steps: multi-process only: the minutes trigger costs a host sync (a
      broadcast from process 0), so it is evaluated only at steps that are multiples of this.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    save_every_steps: int,
    save_every_minutes: float,
    keep_last: int,
    keep_best: int,
    best_metric: str,
    best_mode: str,
    async_save: bool = True,
    time_check_every_steps: int = 1,
  ):
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    if keep_last < 1:
      raise ValueError(f"keep_last must be >= 1 (resume needs the newest), got {keep_last}")
    if keep_best < 0 or save_every_steps < 0 or save_every_minutes < 0:
      raise ValueError("keep_best, save_every_steps and save_every_minutes must be >= 0")
    directory = os.fspath(directory)
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self.directory = epath.Path(directory)
    self.save_every_steps = int(save_every_steps)
    self.save_every_minutes = float(save_every_minutes)
    self.keep_last = int(keep_last)
    self.keep_best = int(keep_best)
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.time_check_every_steps = max(1, int(time_check_every_steps))
    with storage.translate(self.directory):
      self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=None,  # retention is ours, see module doc
          create=True,
          cleanup_tmp_directories=True,  # leftovers of a killed save
          enable_async_checkpointing=async_save,
        ),
      )
    # PreemptionGuard alone feeds JAX's preemption sync point (see its doc). Orbax would report
    # steps to it too, from its async finalize thread with the step of an earlier save: a
    # notice arriving then would agree on a step every process has passed, and none would stop.
    self._manager.reached_preemption = lambda step: False
    self._last_save_time = _now()
    self._complete: set[int] = set()  # steps verified complete (a committed step stays so)
    self._bad: set[int] = set()  # steps that failed to restore
    self._warned: set[int] = set()
    self._scores: dict[int, float | None] = {}
    self._pending_step: int | None = None  # last save started here; may still be in flight
    self._protected: set[int] = set()  # kept whatever keep_last/keep_best say

  # ---------------------------------------------------------------- queries

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def _is_complete(self, step: int) -> bool:
    if step in self._complete:
      return True
    path = self.step_dir(step)
    try:
      committed = (path / _COMMIT_SUCCESS_FILE).exists()
      if not committed:
        step_meta = json.loads((path / _STEP_METADATA_FILE).read_text())
        committed = step_meta.get("commit_timestamp_nsecs") is not None
    except (OSError, ValueError):
      committed = False
    if committed:
      self._complete.add(step)
    return committed

  def _valid_steps(self) -> list[int]:
    """Complete steps not known to be unreadable, ascending; a save in flight is not listed."""
    steps = []
    for step in sorted(self._manager.all_steps()):
      if step in self._bad:
        continue
      if self._is_complete(step):
        steps.append(step)
      elif step not in self._warned and step != self._pending_step:
        self._warned.add(step)
        log.warning("checkpoint %s has no commit marker; ignoring it", self.step_dir(step))
    return steps

  def latest_step(self, at_most: int | None = None) -> int | None:
    """Newest complete checkpoint (no newer than `at_most` if given); a save still in flight
    counts once it has committed."""
    steps = [s for s in self._valid_steps() if at_most is None or s <= at_most]
    return steps[-1] if steps else None

  def protect(self, step: int) -> None:
    """Retention never deletes `step` (the last good checkpoint before a non-finite step)."""
    self._protected.add(step)

  def protected(self) -> set[int]:
    return set(self._protected)

  def _score(self, step: int) -> float | None:
    if step not in self._scores:
      try:
        args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        record = self._manager.restore(step, args=args)["meta"]
        value = (record.get("metrics") or {}).get(self.best_metric)
      except Exception as e:  # noqa: BLE001 - an unreadable record just cannot rank
        log.warning("cannot read metrics of %s: %s", self.step_dir(step), e)
        value = None
      self._scores[step] = value if value is None or math.isfinite(value) else None
    return self._scores[step]

  def _best(self, steps: list[int]) -> list[int]:
    """``steps`` that have the metric, best first; ties go to the newer step."""
    scored = [(s, v) for s in steps if (v := self._score(s)) is not None]
    sign = 1.0 if self.best_mode == "min" else -1.0
    return [s for s, _ in sorted(scored, key=lambda sv: (sign * sv[1], -sv[0]))]

  def best_step(self) -> int | None:
    """Best complete checkpoint by ``best_metric``; None if none has the metric."""
    best = self._best(self._valid_steps())
    return best[0] if best else None

  # ---------------------------------------------------------------- saving

  def should_save(self, step: int) -> bool:
    """Whether the step or wall-clock trigger fires at ``step`` (see class doc)."""
    by_steps = self.save_every_steps > 0 and step > 0 and step % self.save_every_steps == 0
    if by_steps or self.save_every_minutes <= 0:
      return by_steps
    if jax.process_count() == 1:
      return _now() - self._last_save_time >= 60.0 * self.save_every_minutes
    if step % self.time_check_every_steps:
      return False
    # Clocks differ between hosts; a save that only some hosts enter deadlocks in orbax's
    # barriers, so process 0 decides for everyone.
    due = np.asarray(_now() - self._last_save_time >= 60.0 * self.save_every_minutes)
    return bool(multihost_utils.broadcast_one_to_all(due))

  def save(
    self,
    step: int,
    state: Any,
    *,
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    force: bool = False,
  ) -> bool:
    """Starts saving ``state`` (+ JSON ``meta``, ``metrics``) as ``step``; returns if it did.

    Without ``force`` it saves only when ``should_save(step)``; ``force`` is for the final or
    preemption save. A step that already has a complete checkpoint is not written twice.
    Returns once the arrays are copied to host memory, so the caller may donate ``state`` to
    the next train step; writing continues in the background (``wait`` blocks on it).
    """
    if not force and not self.should_save(step):
      return False
    # The previous save must be committed before retention looks at the disk; orbax's save
    # would block on it anyway.
    self._wait_for_save()
    self._prune()
    # A full or read-only disk is found here, in this thread, before orbax's background writer
    # starts: its failures arrive late and as several tracebacks from its threads.
    self.check_writable()
    if step in self._manager.all_steps():
      if step not in self._bad and self._is_complete(step):
        log.info("checkpoint for step %d already exists; not saving it again", step)
        return False
      # Unreadable or uncommitted leftover of an abandoned run: replace it.
      log.warning("replacing incomplete/unreadable checkpoint %s", self.step_dir(step))
      self._manager.delete(step)
      self._forget(step)
    clean = _clean_metrics(metrics)
    record = {"meta": json.loads(json.dumps(dict(meta), default=_json_default)), "metrics": clean,
              "checksums": {"algorithm": CHECKSUM_ALGORITHM, "arrays": checksums(state)}}
    with self._reporting(self.step_dir(step)):
      self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)),
        force=True,  # our should_save decided; orbax's interval policy must not veto it
      )
    self._scores[step] = clean.get(self.best_metric)
    self._pending_step = step
    self._last_save_time = _now()
    return True

  def check_writable(self) -> None:
    """Raises StorageError now if the directory cannot be written (a trainer asks before its
    first step, not after the steps up to its first save)."""
    with self._reporting(self.directory):
      storage.check_writable(self.directory)

  @contextlib.contextmanager
  def _reporting(self, path: epath.Path):
    """Storage refusals inside the block as one StorageError naming `path` and the committed
    checkpoints, which a failed save leaves as they were."""
    try:
      with storage.translate(path):
        yield
    except errors.StorageError as e:
      done = self._valid_steps()
      if not done:
        raise
      raise errors.StorageError(
        f"{e} The checkpoints already in {self.directory} (steps {', '.join(map(str, done))}) "
        "are intact.") from e.__cause__

  def _wait_for_save(self) -> None:
    """Blocks until the in-flight save is committed; its storage failure as StorageError."""
    step = self._pending_step
    try:
      with self._reporting(self.step_dir(step) if step is not None else self.directory):
        self._manager.wait_until_finished()
    except errors.StorageError:
      self._pending_step = None  # failed: no longer in flight
      raise

  def _forget(self, step: int) -> None:
    for cache in (self._complete, self._bad, self._warned):
      cache.discard(step)
    self._scores.pop(step, None)

  def _prune(self) -> None:
    """Deletes committed checkpoints that are neither last-K nor best-K (see module doc)."""
    valid = self._valid_steps()
    if not valid:
      return
    keep = set(valid[-self.keep_last :]) | set(self._best(valid)[: self.keep_best]) | self._protected
    newest = valid[-1]
    for step in list(self._manager.all_steps()):
      stale = step not in valid and step < newest  # incomplete/unreadable, superseded
      if (step in valid and step not in keep) or stale:
        log.debug("deleting checkpoint %s", self.step_dir(step))  # retention, as configured
        with storage.translate(self.step_dir(step)):
          self._manager.delete(step)
        self._forget(step)

  def wait(self) -> None:
    """Blocks until the in-flight save is committed, then applies retention."""
    self._wait_for_save()
    self._prune()

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ---------------------------------------------------------------- restoring

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` into ``abstract_state``'s shapes, dtypes and shardings.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``.sharding`` (e.g.
    ``jax.eval_shape`` output with the target shardings attached): every array is read
    straight into its target sharding, never materialised whole on one device.
    """
    self._manager.wait_until_finished()
    if not self._is_complete(step):
      raise FileNotFoundError(f"no complete checkpoint at {self.step_dir(step)}")
    out = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
      ),
    )
    _verify(self.step_dir(step), out["meta"].get("checksums"), out["state"])
    return out["state"], out["meta"]["meta"]

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """``(step, state, meta)`` of the newest readable checkpoint, or None if there is none.

    Unreadable checkpoints are skipped with a warning naming their directory; if every one
    fails, the newest one's error is raised (a shape or structure mismatch is a bug, not a
    reason to train from scratch).
    """
    self._manager.wait_until_finished()
    first_error: Exception | None = None
    all_corrupt = True
    for step in reversed(self._valid_steps()):
      try:
        state, meta = self.restore(step, abstract_state)
      except CheckpointCorruptError as e:
        log.warning("checkpoint %s is corrupt (%s); falling back to the previous one",
                    self.step_dir(step), e)
        self._bad.add(step)
        first_error = first_error or e
        continue
      except Exception as e:  # noqa: BLE001 - any read failure means: try the older one
        log.warning(
          "checkpoint %s is unreadable (%s: %s); falling back to the previous one",
          self.step_dir(step),
          type(e).__name__,
          str(e)[:500],
        )
        self._bad.add(step)
        first_error = first_error or e
        all_corrupt = False
        continue
      return step, state, meta
    if first_error is not None and all_corrupt:
      raise CheckpointCorruptError(
        f"{self.directory}: every checkpoint is corrupt (newest error: {first_error}). Restore "
        "the directory from a backup, or move it away (or start a new --workdir) to train from "
        "the start."
      ) from first_error
    if first_error is not None:
      raise CheckpointMismatchError(
        f"{self.directory}: no checkpoint could be restored into this run's state (newest error: "
        f"{type(first_error).__name__}: {str(first_error)[:300]}). If they were written with "
        "another config (optimizer, LoRA, frozen groups, averaging) or another jaxtune version, "
        "rerun with that config and version, or start a new --workdir."
      ) from first_error
    return None


class CheckpointMismatchError(errors.CheckpointError, RuntimeError):
  """Every checkpoint in a directory failed to restore into the state this run expects."""


class CheckpointCorruptError(errors.CheckpointError, RuntimeError):
  """A checkpoint's arrays differ from the checksums written when it was saved."""
