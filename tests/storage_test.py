"""Storage refusals (full disk, read-only, a file in the way) become one StorageError naming the
path; other OSErrors pass through."""

import errno
import os

import pytest

from jaxtune import storage, writer
from jaxtune.errors import StorageError


@pytest.mark.parametrize("code, words", [
  (errno.ENOSPC, "no space left on the device"),
  (errno.EROFS, "the file system is read-only"),
  (errno.EACCES, "permission denied"),
  (errno.EDQUOT, "disk quota exceeded"),
])
def test_translate_names_the_path_and_what_to_do(code, words):
  with pytest.raises(StorageError, match=f"cannot write /run/x/metrics.jsonl: {words}.*--workdir") as e:
    with storage.translate("/run/x/metrics.jsonl"):
      raise OSError(code, os.strerror(code), "/run/x/metrics.jsonl.tmp1")
  assert isinstance(e.value, OSError) and e.value.__cause__.errno == code


def test_translate_leaves_other_errors_alone():
  with pytest.raises(FileNotFoundError):
    with storage.translate("/run/x"):
      raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/train.csv")


def test_decorator_names_the_file_of_the_error():
  @storage.reports_storage_errors
  def fails():
    raise PermissionError(errno.EACCES, "Permission denied", "/run/x/run.json")

  with pytest.raises(StorageError, match="cannot write /run/x/run.json: permission denied"):
    fails()


def test_check_writable_probes_and_cleans_up(tmp_path, monkeypatch):
  storage.check_writable(tmp_path / "new")
  assert os.listdir(tmp_path / "new") == []

  def full(fd, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "write", full)
  with pytest.raises(StorageError, match=f"cannot write {tmp_path}: no space left on the device.*--workdir. "
                     "Nothing lost."):
    storage.check_writable(tmp_path, note="Nothing lost.")
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["new"]  # the probe file is gone


def test_write_config_into_an_unwritable_place_names_the_file(tmp_path):
  (tmp_path / "config.json").mkdir()  # a directory in the way: refused for root too
  with pytest.raises(StorageError, match=f"cannot write {tmp_path / 'config.json'}: a directory "
                     "stands where a file is needed"):
    writer.write_config(tmp_path, _Config())
  assert os.listdir(tmp_path) == ["config.json"]  # no temporary copy left behind


class _Config:
  def to_json_best_effort(self, indent=2):
    return "{}"
