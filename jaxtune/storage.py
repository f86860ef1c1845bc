"""Disk trouble as one clear error: a full disk, a read-only or unwritable path.

An `OSError` whose errno says the storage refused (no space, quota, read-only file system,
permission, a file where a directory should be) becomes a `StorageError` naming the path and
saying what to do; any other `OSError` (a missing input file, a bug) passes through unchanged.
`check_writable` probes a directory before work starts in background threads (orbax's async
checkpoint writer), whose failures would otherwise surface late, as a flood of tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os

from jaxtune.errors import StorageError

_WHY = {
  errno.ENOSPC: "no space left on the device: free some space or choose another --workdir",
  errno.EDQUOT: "disk quota exceeded: free some space or choose another --workdir",
  errno.EFBIG: "file too large for the file system: choose another --workdir",
  errno.EROFS: "the file system is read-only: choose a writable --workdir",
  errno.EACCES: "permission denied: make it writable for this user or choose another --workdir",
  errno.EPERM: "operation not permitted: make it writable for this user or choose another --workdir",
  errno.ENOTDIR: "a file stands where a directory is needed: move it away or choose another --workdir",
  errno.EEXIST: "a file stands where a directory is needed: move it away or choose another --workdir",
  errno.EISDIR: "a directory stands where a file is needed: move it away or choose another --workdir",
}


def storage_error(e: OSError, path: str | os.PathLike | None = None,
                  note: str = "") -> StorageError | None:
  """The StorageError for `e` (naming `path`, else the file in `e`), or None if `e` is not a
  storage refusal."""
  why = _WHY.get(e.errno)
  if why is None:
    return None
  where = os.fspath(path) if path is not None else (e.filename or "the workdir")
  return StorageError(f"cannot write {where}: {why}.{' ' + note if note else ''}")


@contextlib.contextmanager
def translate(path: str | os.PathLike | None = None, note: str = ""):
  """Re-raises storage refusals inside the block as StorageError (see module doc), naming
  `path` (the file the user knows, not a temporary one), else the file in the error."""
  try:
    yield
  except StorageError:
    raise
  except OSError as e:
    err = storage_error(e, path, note)
    if err is None:
      raise
    raise err from e


def reports_storage_errors(fn):
  """Decorator: storage refusals escaping `fn` become StorageError naming their file."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with translate():
      return fn(*args, **kwargs)

  return wrapped


def check_writable(directory: str | os.PathLike, note: str = "") -> None:
  """Writes, syncs and removes a small file in `directory` (created if missing); raises
  StorageError naming `directory` when it cannot. Local paths only: a URL is not probed."""
  directory = os.fspath(directory)
  if "://" in directory:
    return
  probe = os.path.join(directory, f".jaxtune-write-check-{os.getpid()}")
  try:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
      os.write(fd, b"\0" * 4096)
      os.fsync(fd)
    finally:
      os.close(fd)
      with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)
  except OSError as e:
    err = storage_error(e, directory, note)
    if err is None:
      raise
    raise err from e
