"""SIGTERM/SIGINT as a stop step that every process of a run agrees on (`PreemptionGuard`).

The driver saves a checkpoint at that step and exits 143; rerunning the command resumes there.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class PreemptionGuard:
  """Context manager turning SIGTERM/SIGINT into a stop the training loop agrees on.

  The handler only sets ``requested`` (nothing else is safe inside a signal handler); the
  driver calls ``should_stop(step)`` after every step and, when true, saves a final checkpoint
  with ``force=True`` and exits. The previous handlers are restored on exit. A second SIGINT
  while a stop is pending raises ``KeyboardInterrupt``, for an impatient user. One process:
  ``should_stop`` is the flag, no host sync.

  Multi-process: stopping must happen at the same step on every host, or the final save
  deadlocks in orbax's barriers (and the other hosts in their next step's collectives); a flag
  set on one host is not enough. Two agreements, both the same answer on every process:

  * SIGTERM (the preemption notice of TPU VMs, GKE, SLURM): ``jax.distributed.initialize``
    starts JAX's preemption service, whose native SIGTERM handler tells every process through
    the coordination service; ``multihost_utils.reached_preemption_sync_point(step)`` then
    agrees on a common step (the fastest host's next one) without a collective per step. The
    guard leaves SIGTERM to that handler: Python's ``signal.getsignal`` cannot see a native
    handler (it reports the handler Python started with), and replacing it would blind the
    service.
  * SIGINT, or SIGTERM with the service disabled (``jax_enable_preemption_service=False``):
    the local flags are all-gathered every ``sync_every_steps`` steps (one host sync each; the
    driver aligns them with its log steps, which sync anyway).

  ``should_stop`` must be called at every step by every process, with the same steps, as the
  sync point requires.
  """

  def __init__(
    self,
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    *,
    sync_every_steps: int = 10,
  ):
    self.signals = tuple(signals)
    self.sync_every_steps = max(1, int(sync_every_steps))
    self.requested = False
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    self._logged = False

  def _handle(self, signum: int, frame: Any) -> None:
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signum = signum

  def __enter__(self) -> PreemptionGuard:
    self.requested, self.signum, self._logged = False, None, False
    if threading.current_thread() is not threading.main_thread():
      log.warning("PreemptionGuard outside the main thread: signals are not intercepted")
      return self
    for sig in self.signals:
      if sig == signal.SIGTERM and jax.process_count() > 1 and _preemption_service_running():
        continue  # JAX's native handler reports SIGTERM to every process; see class doc
      previous = signal.getsignal(sig)
      if previous is None:
        # Installed outside Python, so it could not be restored: leave it in place.
        log.info("signal %s has a non-Python handler; leaving it in place", sig)
        continue
      self._previous[sig] = previous
      signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous.clear()

  def should_stop(self, step: int) -> bool:
    """Whether to save and exit after ``step``; the same answer on every process."""
    stop = self.requested
    if jax.process_count() > 1:
      stop = False
      try:
        stop = bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # preemption service disabled: fall back to gathering flags
        pass
      if not stop and step % self.sync_every_steps == 0:
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        stop = bool(np.any(flags))
      self.requested = self.requested or stop
    if stop and not self._logged:
      self._logged = True
      why = f"signal {self.signum}" if self.signum else "a preemption notice or another process"
      log.warning("stop requested (%s) at step %d: saving and exiting", why, step)
    return stop


def _preemption_service_running() -> bool:
  """Whether jax.distributed started JAX's preemption sync manager (it owns SIGTERM then)."""
  from jax._src import distributed as jax_distributed  # no public accessor (jax 0.4.3x-0.10)

  return getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None
