"""The workdir lock: one holder at a time, named; stale locks of dead processes taken over."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxtune import workdir_lock, writer
from jaxtune.errors import WorkdirError

REPO = Path(__file__).resolve().parents[1]


def plant(workdir: Path, **holder) -> Path:
  path = workdir / workdir_lock.LOCK_FILE
  path.write_text(json.dumps({"since": "2026-01-01T00:00:00+00:00", **holder}) + "\n")
  return path


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_held_lock_names_this_process_and_is_removed_on_release(tmp_path):
  lock = workdir_lock.acquire(tmp_path)
  holder = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  with pytest.raises(WorkdirError, match=rf"in use by pid {os.getpid()} on host"):
    workdir_lock.acquire(tmp_path)  # a second open file: the kernel lock refuses it
  lock.release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
  workdir_lock.acquire(tmp_path).release()


def test_hold_releases_on_exceptions_and_the_preemption_exit(tmp_path):
  for exc in (ValueError("boom"), SystemExit(143)):
    with pytest.raises(type(exc)), workdir_lock.hold(tmp_path):
      assert (tmp_path / workdir_lock.LOCK_FILE).exists()
      raise exc
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_lock_of_a_sigkilled_process_is_taken_over(tmp_path, caplog):
  code = ("import sys, time; from jaxtune import workdir_lock; "
          f"workdir_lock.acquire({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
  try:
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirError, match=f"pid {proc.pid}"):
      workdir_lock.acquire(tmp_path)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == proc.pid
  with caplog.at_level(logging.WARNING):
    workdir_lock.acquire(tmp_path).release()
  assert f"stale lock left by pid {proc.pid}" in caplog.text


def test_planted_lock_of_a_dead_process_on_this_host_is_stale(tmp_path, caplog):
  pid = dead_pid()
  plant(tmp_path, pid=pid, host=socket.gethostname())
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.acquire(tmp_path)
  assert "taking over a stale lock" in caplog.text and f"pid {pid}" in caplog.text
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()


def test_live_process_named_in_the_file_is_refused_unless_its_pid_was_reused(tmp_path):
  path = plant(tmp_path, pid=os.getpid(), host=socket.gethostname())
  with pytest.raises(WorkdirError, match=rf"pid {os.getpid()} .*names a live process.*delete"):
    workdir_lock.acquire(tmp_path)
  assert json.loads(path.read_text())["pid"] == os.getpid()  # the record is left alone
  start = workdir_lock._start_ticks(os.getpid())
  if start is None:
    pytest.skip("no /proc: process start times unknown")
  plant(tmp_path, pid=os.getpid(), host=socket.gethostname(), pid_start=start + 1)
  workdir_lock.acquire(tmp_path).release()  # same pid, later start: a reused pid, stale


def test_lock_of_another_host_cannot_be_checked_and_says_how_to_remove_it(tmp_path):
  path = plant(tmp_path, pid=1, host="elsewhere-7")
  with pytest.raises(WorkdirError, match=rf"host elsewhere-7 .*another host.*delete {path}"):
    workdir_lock.acquire(tmp_path)
  assert path.exists()


def test_unreadable_lock_file_is_refused(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).write_text("not json")
  with pytest.raises(WorkdirError, match="cannot read"):
    workdir_lock.acquire(tmp_path)


def test_empty_lock_file_left_by_a_crash_is_taken(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).write_text("")
  workdir_lock.acquire(tmp_path).release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_remote_workdir_lock_is_best_effort(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(writer, "is_remote", lambda p: str(p).startswith(str(tmp_path)))
  with caplog.at_level(logging.INFO):
    lock = workdir_lock.acquire(tmp_path)
  assert "best effort" in caplog.text
  with pytest.raises(WorkdirError, match="names a live process"):
    workdir_lock.acquire(tmp_path)
  lock.release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


@pytest.mark.parametrize("value", ["", "   ", None])
def test_empty_workdir_is_refused(value):
  with pytest.raises(WorkdirError, match="--workdir is empty"):
    workdir_lock.require(value)


def test_lock_wait_is_not_needed_by_other_processes(tmp_path):
  # A second `acquire` never blocks: it answers at once (a multi-host run's other processes
  # do not touch the lock at all; see `hold`).
  lock = workdir_lock.acquire(tmp_path)
  t0 = time.perf_counter()
  with pytest.raises(WorkdirError):
    workdir_lock.acquire(tmp_path)
  assert time.perf_counter() - t0 < 1.0
  lock.release()


def test_multi_host_only_process_zero_locks_and_every_process_learns_a_refusal(tmp_path, monkeypatch):
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  sent = []

  def broadcast(x):  # process 0's value reaches everyone
    sent.append(int(x))
    return np.int32(sent[0])

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  plant(tmp_path, pid=1, host="elsewhere-7")
  with pytest.raises(WorkdirError, match="another host"), workdir_lock.hold(tmp_path):
    pass
  assert sent == [0]
  monkeypatch.setattr(jax, "process_index", lambda: 1)  # told "refused" by process 0
  with pytest.raises(WorkdirError, match="process 0 could not take"), workdir_lock.hold(tmp_path):
    pass
  sent[:] = []
  (tmp_path / workdir_lock.LOCK_FILE).unlink()
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: np.int32(1))
  with workdir_lock.hold(tmp_path):
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # process 1 takes no lock


_TWO_PROCESS = """
import os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxtune import workdir_lock
from jaxtune.errors import WorkdirError
try:
  with workdir_lock.hold(sys.argv[3]):
    print("held", flush=True)
except WorkdirError as e:
  print("refused:", e, flush=True)
"""


def test_two_processes_through_jax_distributed_agree_without_deadlock(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}

  def both():
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS, f"localhost:{port}", str(i),
                               str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for i in range(2)]
    return [p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs]

  assert both() == ["held", "held"]
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
  plant(tmp_path, pid=1, host="elsewhere-7")
  first, second = both()
  assert "another host" in first and "process 0 could not take the workdir lock" in second
