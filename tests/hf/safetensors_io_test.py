"""Safetensors reading and writing: round trips, and malformed or hostile files (headers of the
wrong shape, offsets out of the file or overlapping, indexes pointing out of the model folder)
refused with a CheckpointError naming the file and tensor."""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from jaxtune.hf import safetensors_io
from jaxtune.hf.errors import CheckpointError
from jaxtune.hf.safetensors_io import SafetensorsFile, SafetensorsSource


def write_raw(path, header, data: bytes = b"", *, length: int | None = None):
  """A safetensors file built by hand: `header` is dumped as is (any JSON, right or wrong)."""
  blob = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
  return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
  return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_round_trip(tmp_path):
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": np.ones((4,), ml_dtypes.bfloat16), "c": np.zeros((0, 3), np.int64)}
  safetensors_io.write_safetensors(tmp_path / "m.safetensors", tensors)
  src = SafetensorsSource.from_dir(tmp_path)
  assert src.names() == set(tensors)
  for k, v in tensors.items():
    np.testing.assert_array_equal(src.get(k), v)
    assert src.get(k).dtype == v.dtype and src.shape(k) == v.shape


MALFORMED = {
  "a JSON list": ([entry()], b"\0" * 8, r"header is a JSON list, not an object of tensors"),
  "not JSON": (None, b"", r"not a valid safetensors file \(the header is not JSON"),
  "an entry that is a number": ({"w": 3}, b"", r"tensor 'w': its header entry is a JSON int"),
  "no data_offsets": ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8,
                      r"tensor 'w': its header entry lacks data_offsets"),
  "data_offsets of one number": ({"w": entry(offsets=(8,))}, b"\0" * 8,
                                 r"tensor 'w': data_offsets \[8\] is not \[begin, end\]"),
  "data_offsets reversed": ({"w": entry(offsets=(8, 0))}, b"\0" * 8, r"tensor 'w': data_offsets"),
  "negative offset": ({"w": entry(offsets=(-8, 0))}, b"\0" * 8, r"tensor 'w': data_offsets"),
  "offsets past the end": ({"w": entry(offsets=(0, 8)), "v": entry(offsets=(8, 16))}, b"\0" * 8,
                           r"file is truncated .*tensors cut off: v"),
  "overlapping": ({"w": entry(shape=(4,), offsets=(0, 16)), "v": entry(offsets=(8, 16))},
                  b"\0" * 16, r"tensors 'w' and 'v' overlap"),
  "overlap behind an empty tensor": (
    {"w": entry(shape=(4,), offsets=(0, 16)), "e": entry(shape=(0,), offsets=(4, 4)),
     "v": entry(offsets=(8, 16))}, b"\0" * 16, r"tensors 'w' and 'v' overlap"),
  "unknown dtype": ({"w": entry(dtype="F128")}, b"\0" * 8, r"tensor 'w': unknown dtype 'F128'"),
  "shape of text": ({"w": entry(shape=("2",))}, b"\0" * 8, r"tensor 'w': shape \['2'\] is not"),
  "shape against bytes": ({"w": entry(shape=(3,))}, b"\0" * 8,
                          r"tensor 'w': has 8 bytes, but shape \(3,\) F32 needs 12"),
}


@pytest.mark.parametrize("header,data,message", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_header_is_refused_naming_file_and_tensor(tmp_path, header, data, message):
  f = tmp_path / "model.safetensors"
  if header is None:
    f.write_bytes(struct.pack("<Q", 4) + b"{]x\xff")
  else:
    write_raw(f, header, data)
  with pytest.raises(CheckpointError, match=rf"^{f}: .*{message}"):
    SafetensorsFile(f)


def test_header_length_larger_than_the_file(tmp_path):
  f = write_raw(tmp_path / "model.safetensors", {"w": entry()}, b"\0" * 8, length=10**12)
  with pytest.raises(CheckpointError, match=rf"^{f}: .*header length 1000000000000 exceeds the file size"):
    SafetensorsFile(f)
  f.write_bytes(b"\1\2\3")
  with pytest.raises(CheckpointError, match=rf"^{f}: .*too short .* truncated"):
    SafetensorsFile(f)


def test_unreadable_dtype_of_the_format_is_refused_only_when_read(tmp_path):
  f = write_raw(tmp_path / "model.safetensors",
                {"w": entry(), "q": entry(dtype="F4", shape=(3,), offsets=(8, 10))}, b"\0" * 10)
  src = SafetensorsFile(f)
  assert src.get("w").tolist() == [0.0, 0.0]
  with pytest.raises(CheckpointError, match=r"tensor 'q' has unsupported dtype F4"):
    src.get("q")


def _sharded(tmp_path, weight_map: dict) -> os.PathLike:
  d = tmp_path / "model"
  d.mkdir()
  safetensors_io.write_safetensors(d / "a.safetensors", {"w": np.zeros(2, np.float32)})
  (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return d


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors",
                                   "ABSOLUTE", "link.safetensors"])
def test_index_pointing_outside_the_model_folder_is_refused(tmp_path, shard):
  outside = tmp_path / "outside.safetensors"
  safetensors_io.write_safetensors(outside, {"v": np.zeros(2, np.float32)})
  shard = str(outside) if shard == "ABSOLUTE" else shard
  d = _sharded(tmp_path, {"w": "a.safetensors", "v": shard})
  (d / "link.safetensors").symlink_to(outside)
  index = d / "model.safetensors.index.json"
  with pytest.raises(CheckpointError, match=rf"^{index}: tensor 'v' points outside the model folder"):
    SafetensorsSource.from_dir(d)


def test_index_with_shards_in_the_folder_and_hub_cache_symlinks(tmp_path):
  d = _sharded(tmp_path, {"w": "a.safetensors"})
  assert SafetensorsSource.from_dir(d).names() == {"w"}
  # huggingface_hub's cache: snapshots/<rev>/ holds symlinks to ../../blobs/<hash>
  repo = tmp_path / "models--o--m"
  (repo / "blobs").mkdir(parents=True)
  snap = repo / "snapshots" / "abc"
  snap.mkdir(parents=True)
  os.replace(d / "a.safetensors", repo / "blobs" / "1234")
  (snap / "a.safetensors").symlink_to("../../blobs/1234")
  os.replace(d / "model.safetensors.index.json", snap / "model.safetensors.index.json")
  assert SafetensorsSource.from_dir(snap).names() == {"w"}


@pytest.mark.parametrize("content", [[], {"weight_map": ["a.safetensors"]}, {"metadata": {}},
                                     {"weight_map": {"w": 3}}])
def test_index_without_a_weight_map_is_refused(tmp_path, content):
  d = _sharded(tmp_path, {})
  index = d / "model.safetensors.index.json"
  index.write_text(json.dumps(content))
  with pytest.raises(CheckpointError, match=rf"^{index}: no 'weight_map' object"):
    SafetensorsSource.from_dir(d)
