"""The preemption guard: SIGTERM/SIGINT become a stop step, handlers are restored, and on
several processes SIGTERM is left to JAX's preemption service."""

import os
import signal
import time

import jax
import pytest

from jaxtune.preemption import PreemptionGuard


def _wait_for(cond, timeout=5.0):
  end = time.monotonic() + timeout
  while not cond() and time.monotonic() < end:
    time.sleep(0.01)
  return cond()


def test_preemption_guard_sets_flag_and_restores_handlers():
  before_term = signal.getsignal(signal.SIGTERM)
  before_int = signal.getsignal(signal.SIGINT)
  with PreemptionGuard() as guard:
    assert signal.getsignal(signal.SIGTERM) != before_term
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(lambda: guard.requested)
    assert guard.signum == signal.SIGTERM and guard.should_stop(2)
  assert signal.getsignal(signal.SIGTERM) == before_term
  assert signal.getsignal(signal.SIGINT) == before_int

  with PreemptionGuard() as guard:
    assert not guard.requested  # fresh flag per use
    os.kill(os.getpid(), signal.SIGINT)
    assert _wait_for(lambda: guard.requested) and guard.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C means "now"
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for(lambda: False, timeout=2.0)
  assert signal.getsignal(signal.SIGINT) == before_int


def test_preemption_guard_leaves_sigterm_to_jax_on_several_processes(monkeypatch):
  """jax.distributed's preemption service catches SIGTERM natively and agrees a stop step for
  every process; a Python handler would replace it unseen (getsignal reports Python's initial
  handler), so only SIGINT is the guard's there."""
  from jax._src import distributed as jax_distributed

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax_distributed.global_state, "preemption_sync_manager", object())
  before_term = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard() as guard:
    assert signal.getsignal(signal.SIGTERM) == before_term
    assert signal.getsignal(signal.SIGINT) == guard._handle
  monkeypatch.setattr(jax_distributed.global_state, "preemption_sync_manager", None)
  with PreemptionGuard() as guard:  # service disabled: the guard catches SIGTERM itself
    assert signal.getsignal(signal.SIGTERM) == guard._handle
