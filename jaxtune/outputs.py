"""Output folders that lose nothing: where a command may write, and the record of what it wrote.

One rule for `jaxtune export --out`, `jaxtune data audit|clean --out`, `jaxtune eval --name` and
the driver's own export (workdir/export):
- a file jaxtune did not write is never replaced. An output folder of the command's own
  (export, data) that holds any other file is refused; so is a named output in a shared folder
  (eval_NAME.json in a workdir) that exists but was not written by jaxtune. `--overwrite` allows
  both.
- an output never replaces its own input (a run's checkpoints and records, the data file), not
  even with `--overwrite`.
- names stay in their folder: no '..', no path separators, no absolute paths.
What jaxtune wrote into a folder is listed in its `.jaxtune-outputs.json` (name, command, size and
modification time), so rerunning a command into its own earlier output is fine; a listed file
changed since (edited by hand, say) counts as someone else's. Files a command wrote last time but
not this time are removed from a folder of its own (a stale shard index would mislead readers).

Files whose names are only known once written (an HF export) are written into a staging folder
and moved into place by `publish` after every name is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from etils import epath

from jaxtune.errors import OutputError

MANIFEST = ".jaxtune-outputs.json"
STAGING_PREFIX = ".jaxtune-staging-"
_LISTED = 3  # foreign files named in a message


def check_name(name: str, flag: str) -> str:
  """`name` as a plain file name: refused when empty, absolute, '.'/'..' or with a separator."""
  text = str(name)
  bad = (not text.strip() or os.path.isabs(text) or text in (".", "..") or "\0" in text
         or any(sep in text for sep in ("/", "\\", os.sep)))
  if bad:
    raise OutputError(f"{flag}={text!r}: give a plain name (no '/', '\\', '..' or absolute path): "
                      f"it names a file inside its folder")
  return text


def check_new_file(path, *, flag: str, overwrite: bool, inputs: Iterable = ()) -> Path:
  """A single output file chosen by the user (`jaxtune generate --out`): never one of the
  command's inputs, and an existing file only with `overwrite`. No manifest: the file stands
  wherever the user put it, and a folder of theirs gets nothing else."""
  if not str(path or "").strip():
    raise OutputError(f"{flag} is empty: give the file to write")
  real = _real(path)
  for p in inputs:
    if p and _real(p) == real:
      raise OutputError(f"{flag}={path}: is {p}, an input of this command; an output may not "
                        "replace its own input: choose another file")
  if os.path.isdir(real):
    raise OutputError(f"{flag}={path}: a folder, not a file: give a file name")
  if os.path.exists(real) and not overwrite:
    raise OutputError(f"{flag}={path}: exists; jaxtune never replaces a file unasked: choose "
                      "another name, or pass --overwrite to replace it")
  return Path(path)


def _real(path) -> str:
  return os.path.realpath(os.fspath(path))


def _inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Folder:
  """The files one command writes into `folder` (see module doc).

  Args:
    command: the command as the user knows it ('jaxtune export'), recorded with each file.
    flag: the flag or config key that chose the folder, named in messages: '--out' reads
      '--out=DIR: ...', a config key such as 'export.enabled' reads 'DIR (export.enabled): ...'.
    overwrite: replace files jaxtune did not write (never inputs).
    inputs: files and folders this command reads; no output may land on or in them.
    own: the folder is the command's alone (any other file in it is refused), else only the
      files it writes are checked (eval's files in a workdir).
    expected: names the command will write, checked now so a refusal comes before the work.
    hint: what the user can do about files jaxtune did not write (default: another folder or
      name, or --overwrite).
  """

  def __init__(self, folder, *, command: str, flag: str, overwrite: bool = False,
               inputs: Iterable = (), own: bool = True, expected: Iterable[str] = (),
               hint: str = ""):
    from jaxtune import writer

    if folder is None or not str(os.fspath(folder)).strip():
      raise OutputError(f"{flag} is empty: give the folder to write into")
    self.folder = epath.Path(folder)
    self.remote = writer.is_remote(folder)
    self.command, self.flag, self.overwrite, self.own = command, flag, overwrite, own
    self.hint = hint or ("choose an empty or new folder, or pass --overwrite to write among them"
                         if own else f"choose another {flag}, or pass --overwrite to replace it")
    self.inputs = [_real(p) for p in inputs if p and (writer.is_remote(p) or os.path.exists(p))]
    self.input_dirs = [p for p in self.inputs if os.path.isdir(p)]
    self.where = f"{flag}={folder}" if flag.startswith("-") else f"{folder} ({flag})"
    self.written: list[str] = []
    self.previous = self._read_manifest()
    if not self.remote:
      real = _real(self.folder)
      for d in self.input_dirs:
        if _inside(real, d):
          raise OutputError(f"{self.where}: inside {d}, which this command reads; an output "
                            "may not replace its own input: choose another folder")
      if self.folder.exists() and not self.folder.is_dir():
        raise OutputError(f"{self.where}: a file, not a folder: choose a folder to write into")
    if own and not overwrite:
      foreign = self._foreign()
      if foreign:
        more = " and more" if len(foreign) > _LISTED else ""
        raise OutputError(
          f"{self.where}: holds files jaxtune did not write ({', '.join(foreign[:_LISTED])}"
          f"{more}); {command} never replaces them: {self.hint}")
    for name in expected:
      self._check_target(name)

  # --------------------------------------------------------------------------- checking

  def _read_manifest(self) -> dict:
    path = self.folder / MANIFEST
    try:
      data = json.loads(path.read_text()) if path.exists() else {}
    except (ValueError, OSError):
      data = {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}

  def _ours(self, rel: str) -> bool:
    """Whether the file at `rel` is one jaxtune wrote and nobody changed since."""
    entry = self.previous.get(rel)
    if not isinstance(entry, dict):
      return False
    if self.remote:
      return True
    try:
      st = os.stat(os.path.join(os.fspath(self.folder), rel))
    except OSError:
      return True
    return st.st_size == entry.get("size") and st.st_mtime_ns == entry.get("mtime_ns")

  def _files(self):
    """Every file under the folder (relative, '/'-separated), without the record and staging."""
    if not self.folder.exists():
      return
    if self.remote:
      for p in sorted(self.folder.rglob("*")):
        rel = str(p.relative_to(self.folder))
        if not p.is_dir() and not rel.startswith(STAGING_PREFIX) and rel != MANIFEST:
          yield rel
      return
    root = os.fspath(self.folder)
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith(STAGING_PREFIX))
      for f in sorted(filenames):
        rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
        if rel != MANIFEST:
          yield rel

  def _foreign(self, limit: int = 20) -> list[str]:
    """Files here that jaxtune did not write (the first `limit`: a home folder is not walked
    whole)."""
    out = []
    for rel in self._files():
      if not self._ours(rel):
        out.append(rel)
        if len(out) >= limit:
          break
    return out

  def _check_target(self, rel: str) -> None:
    """Refuse writing `rel`: an input (always), or a file jaxtune did not write (no overwrite)."""
    target = self.folder / rel
    if not self.remote:
      real = _real(target)
      for p in self.inputs:
        if _inside(real, p):
          raise OutputError(f"{self.where}: writing {rel} would replace {p}, an "
                            "input of this command; an output may not replace its own input: "
                            "choose another folder or name")
    if not self.overwrite and target.exists() and not self._ours(rel):
      raise OutputError(f"{target}: exists and was not written by jaxtune; {self.command} never "
                        f"replaces such a file: {self.hint}")

  # ---------------------------------------------------------------------------- writing

  def path(self, name: str) -> epath.Path:
    """The path to write `name` at, checked and recorded (call `commit` once written)."""
    check_name(name, self.flag)
    self._check_target(name)
    self.folder.mkdir(parents=True, exist_ok=True)
    self.written.append(name)
    return self.folder / name

  def staging(self) -> Path:
    """A local folder to write into before `publish` (inside the output folder when local, so
    files move by rename)."""
    if self.remote:
      return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    self.folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=os.fspath(self.folder)))

  def publish(self, staging: Path) -> list[str]:
    """Move every file of `staging` into the folder (all names checked first), then `commit`."""
    staging = Path(staging)
    rels = sorted(str(p.relative_to(staging)).replace(os.sep, "/") for p in staging.rglob("*")
                  if p.is_file() or p.is_symlink())
    for rel in rels:
      self._check_target(rel)
    for rel in rels:
      dest = self.folder / rel
      if self.remote:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((staging / rel).read_bytes())
      else:
        os.makedirs(os.path.dirname(os.fspath(dest)), exist_ok=True)
        os.replace(staging / rel, os.fspath(dest))
    shutil.rmtree(staging, ignore_errors=True)
    self.written.extend(rels)
    self.commit()
    return rels

  def commit(self) -> None:
    """Record the files written (and, in a folder of its own, remove those of the command's
    previous run that this run did not write again)."""
    files = {}
    written = set(self.written)
    for rel, entry in self.previous.items():
      if rel in written:
        continue
      if self.own and self._ours(rel) and isinstance(entry, dict) and entry.get("by") == self.command:
        target = self.folder / rel
        if target.exists():
          target.unlink()
        continue
      if (self.folder / rel).exists():
        files[rel] = entry
    for rel in self.written:
      entry = {"by": self.command}
      if not self.remote:
        st = os.stat(os.fspath(self.folder / rel))
        entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
      files[rel] = entry
    self.folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"files": files}, indent=1, sort_keys=True) + "\n"
    if self.remote:
      (self.folder / MANIFEST).write_text(text)
    else:
      tmp = os.path.join(os.fspath(self.folder), f"{MANIFEST}.tmp{os.getpid()}")
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, os.fspath(self.folder / MANIFEST))
    self.previous = files
