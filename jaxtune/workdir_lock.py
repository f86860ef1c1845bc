"""One training process per workdir: an advisory lock file naming its holder.

`hold(workdir)` takes `workdir/jaxtune.lock` for the length of a `with` block and removes it on
the way out (normal end, exception, or the preemption path's SystemExit). The lock is the
kernel's `flock` on that file, which the kernel drops when the holder dies, SIGKILL included;
the file's text names the holder (pid, host, start time) for the message a second run gets.

What a run finds, and does:
- the kernel lock held: another process on this machine (or one the shared filesystem's locks
  reach) trains here: refused, naming it.
- the kernel lock free but the file names a holder (a process killed before it could remove
  the file, or a file copied or planted here):
  - on this host, that process gone (or its pid reused by a newer process): a stale lock,
    taken over with a warning;
  - on this host and alive: refused (the kernel lock may not work on this filesystem);
  - on another host: it cannot be checked from here, so refused, saying which file to delete if
    no run trains there any more.
Multi-host runs: only process 0 takes the lock; the others learn its outcome through one
broadcast every process joins, so none waits on a lock and all fail together when it is refused.
Remote workdirs (gs://): object stores have neither flock nor an atomic create through epath,
so the lock is best effort (read, then write; a race between two starts can slip through), as
the log line says.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
from collections.abc import Iterator

from etils import epath

from jaxtune.errors import WorkdirError

log = logging.getLogger(__name__)

LOCK_FILE = "jaxtune.lock"


def require(value, flag: str = "--workdir") -> str:
  """`value` as a workdir path; an empty or blank one is refused (it would mean the current
  directory, where a run's files would land among the user's)."""
  text = os.fspath(value) if value is not None else ""
  if not str(text).strip():
    raise WorkdirError(f"{flag} is empty: give the run's directory, e.g. {flag}=runs/my_run")
  return text


# ----------------------------------------------------------------------------- holders


def _host() -> str:
  return socket.gethostname()


def _start_ticks(pid: int) -> int | None:
  """When `pid` started (clock ticks since boot, Linux), to tell it from a later process that
  reuses the pid; None where /proc is not available."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
  fields = stat.rsplit(")", 1)[-1].split()
  if fields[0] == "Z":  # a zombie: dead, only waiting for its parent to reap it
    return -1
  return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
  """Whether the process that wrote a lock (pid, start ticks) still runs on this host."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by another user
  now = _start_ticks(pid)
  if now == -1:
    return False
  return start is None or now is None or now == start


def _me() -> dict:
  pid = os.getpid()
  return {"pid": pid, "host": _host(), "pid_start": _start_ticks(pid),
          "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _parse(text: str) -> dict | None:
  """The holder a lock file names, or None for an empty file; an unreadable one is a holder
  that cannot be checked."""
  if not text.strip():
    return None
  try:
    holder = json.loads(text)
  except ValueError:
    holder = None
  if not isinstance(holder, dict):
    return {"pid": -1, "host": "?", "since": "?", "unreadable": True}
  return holder


def describe(holder: dict | None) -> str:
  if not holder:
    return "a process that is just starting (the lock file names no holder yet)"
  return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


def _refuse(path, holder: dict | None, why: str) -> WorkdirError:
  return WorkdirError(f"{path.parent}: in use by {describe(holder)} ({why}); wait for it to end, "
                      f"or pass another --workdir")


def _judge(path, holder: dict) -> None:
  """A holder named in the file of a lock nobody holds: take it over (with a warning) when it is
  a dead process of this host, else refuse."""
  if holder.get("unreadable"):
    raise WorkdirError(f"{path}: a lock file jaxtune cannot read; if no jaxtune run trains in "
                       f"{path.parent}, delete {path} and rerun")
  if holder.get("host") != _host():
    raise WorkdirError(
      f"{path.parent}: locked by {describe(holder)}, another host, which cannot be checked from "
      f"here; if no jaxtune run trains in this workdir on {holder.get('host')} any more, "
      f"delete {path} and rerun")
  if _alive(int(holder.get("pid", -1)), holder.get("pid_start")):
    raise WorkdirError(
      f"{path.parent}: in use by {describe(holder)} ({path} names a live process); wait for it "
      f"to end or pass another --workdir; if that process is not a jaxtune run in this workdir, "
      f"delete {path} and rerun")
  log.warning("%s: taking over a stale lock left by %s: that process is gone", path,
              describe(holder))


# ------------------------------------------------------------------------------- local


class _LocalLock:
  def __init__(self, path: str, fd: int):
    self.path, self.fd = path, fd

  def release(self) -> None:
    import fcntl

    try:
      # Remove the file only if it is still ours (nobody replaced it); then drop the lock.
      if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
        os.unlink(self.path)
    except FileNotFoundError:
      pass
    finally:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)


def _acquire_local(workdir: str) -> _LocalLock:
  import fcntl

  path = os.path.join(workdir, LOCK_FILE)
  for _ in range(5):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
      os.close(fd)
      raise _refuse(epath.Path(path), holder, f"it holds {path}") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      # No flock on this filesystem: the holder's record alone decides.
      log.warning("%s: this filesystem has no file locks (%s); the workdir lock is best effort",
                  path, e.strerror)
    try:
      # A holder that released between our open and flock may have unlinked the file: the
      # lock we got would be on a file nobody else sees. Start over on the current one.
      if os.stat(path).st_ino != os.fstat(fd).st_ino:
        os.close(fd)
        continue
    except FileNotFoundError:
      os.close(fd)
      continue
    try:
      holder = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
      if holder is not None:
        _judge(epath.Path(path), holder)
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(_me()) + "\n").encode(), 0)
      os.fsync(fd)
    except BaseException:
      os.close(fd)  # closing drops the kernel lock; the file stays: it is someone else's record
      raise
    return _LocalLock(path, fd)
  raise WorkdirError(f"{path}: could not take the workdir lock (it kept changing); retry")


# ------------------------------------------------------------------------------ remote


class _RemoteLock:
  def __init__(self, path: epath.Path, record: str):
    self.path, self.record = path, record

  def release(self) -> None:
    try:
      if self.path.exists() and self.path.read_text() == self.record:
        self.path.unlink()
    except OSError as e:
      log.warning("%s: could not remove the workdir lock (%s); delete it before the next run", self.path, e)


def _acquire_remote(workdir: str) -> _RemoteLock:
  path = epath.Path(workdir) / LOCK_FILE
  log.info("%s: a remote workdir: its lock is best effort (object stores have no atomic create "
           "here), so do not start two runs on it at once", path)
  if path.exists():
    holder = _parse(path.read_text())
    if holder is not None:
      _judge(path, holder)
  record = json.dumps(_me()) + "\n"
  path.write_text(record)
  return _RemoteLock(path, record)


# ---------------------------------------------------------------------------------- api


def acquire(workdir: str | os.PathLike):
  """The lock on `workdir` (an existing directory), or WorkdirError naming its holder.
  Call `.release()` on the result; `hold` does it for you."""
  from jaxtune import writer

  if writer.is_remote(workdir):
    return _acquire_remote(os.fspath(workdir))
  return _acquire_local(os.fspath(workdir))


def holder(workdir: str | os.PathLike) -> dict | None:
  """Who trains in `workdir` now, as its lock file names it (with "checked": False when that is
  another host, which cannot be checked from here), or None when no live process holds it. Only
  reads: `jaxtune report` calls it to tell a run in progress from one that stopped."""
  path = epath.Path(workdir) / LOCK_FILE
  try:
    found = _parse(path.read_text()) if path.exists() else None
  except OSError:
    return None
  if not found or found.get("unreadable"):
    return None
  if found.get("host") != _host():
    return {**found, "checked": False}
  if not _alive(int(found.get("pid", -1)), found.get("pid_start")):
    return None
  return {**found, "checked": True}


@contextlib.contextmanager
def hold(workdir: str | os.PathLike) -> Iterator[None]:
  """Hold the workdir's lock for the block (process 0 of a multi-host run; see module doc)."""
  import jax

  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir)
    except WorkdirError as e:
      error = e
  try:
    if jax.process_count() > 1:
      import numpy as np
      from jax.experimental import multihost_utils

      # Every process joins this one broadcast, so none waits on the lock and all stop together.
      ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
      if not ok and error is None:
        error = WorkdirError(f"{workdir}: process 0 could not take the workdir lock (see its log)")
    if error is not None:
      raise error
    yield
  finally:
    if lock is not None:
      lock.release()
