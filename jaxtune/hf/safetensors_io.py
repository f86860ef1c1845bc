"""Tensor sources (safetensors, pickled torch) read lazily one tensor at a time, and a writer.

We parse safetensors ourselves (an 8-byte header length, a JSON header, raw bytes) over a
memory map: nothing is read before it is asked for, bfloat16 works through ml_dtypes, and a
truncated or corrupt file is caught with the file and tensor named.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxtune.hf.errors import CheckpointError, read_json

_DTYPES = {
  "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
  "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
  "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
# Every dtype of the safetensors format and its width, readable or not: a file may hold a
# tensor jaxtune cannot read as long as it is not asked for.
_BITS = {
  "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
  "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64,
  "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
MAX_SHARD_BYTES = 5 * 1000**3


class TensorSource:
  """Named tensors from one checkpoint; `file_of` says where each lives, for error messages."""

  def names(self) -> set[str]:
    raise NotImplementedError

  def shape(self, name: str) -> tuple[int, ...]:
    raise NotImplementedError

  def get(self, name: str) -> np.ndarray:
    raise NotImplementedError

  def file_of(self, name: str) -> str:
    raise NotImplementedError


class SafetensorsFile:
  """One safetensors file; its header is checked whole at open (shape, offsets inside the file
  and not overlapping, dtype, byte counts), so a malformed or hostile file is refused naming
  the file and tensor before anything is read from it."""

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    size = os.path.getsize(self.path)
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise CheckpointError(f"{self.path}: not a valid safetensors file ({size} bytes, too "
                              "short for the 8-byte header length): the file is truncated")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise CheckpointError(f"{self.path}: not a valid safetensors file (header length {n} "
                              f"exceeds the file size {size}): the file is truncated or corrupt")
      raw = f.read(n)
    try:
      header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{self.path}: not a valid safetensors file (the header is not "
                            f"JSON: {e})") from e
    if not isinstance(header, dict):
      raise CheckpointError(f"{self.path}: not a valid safetensors file (the header is a JSON "
                            f"{type(header).__name__}, not an object of tensors)")
    header.pop("__metadata__", None)
    self.header = header
    self.data_start = 8 + n
    self._check_header(size - self.data_start)
    self._mmap = None

  def _check_header(self, data_size: int) -> None:
    spans = []
    for name, info in self.header.items():
      where = f"{self.path}: tensor {name!r}"
      if not isinstance(info, dict):
        raise CheckpointError(f"{where}: its header entry is a JSON {type(info).__name__}, not "
                              "an object with dtype, shape and data_offsets")
      missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
      if missing:
        raise CheckpointError(f"{where}: its header entry lacks {', '.join(missing)}")
      dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
      if dtype not in _BITS:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r} (safetensors has "
                              f"{', '.join(_BITS)})")
      if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
      if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
              and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not [begin, end] with "
                              "0 <= begin <= end")
      if offsets[1] > data_size:
        cut = sorted(k for k, v in self.header.items() if isinstance(v, dict) and
                     isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2 and
                     _is_count(v["data_offsets"][1]) and v["data_offsets"][1] > data_size)
        raise CheckpointError(
          f"{self.path}: file is truncated ({self.data_start + data_size} bytes, the header "
          f"needs {self.data_start + offsets[1]}); tensors cut off: {', '.join(cut[:5])}")
      need = -(-_BITS[dtype] * math.prod(shape) // 8)
      if offsets[1] - offsets[0] != need:
        raise CheckpointError(f"{where}: has {offsets[1] - offsets[0]} bytes, but shape "
                              f"{tuple(shape)} {dtype} needs {need}")
      spans.append((offsets[0], offsets[1], name))
    reach, last = 0, None  # the furthest end so far, and whose it is
    for begin, end, name in sorted(spans):
      if begin == end:
        continue  # an empty tensor holds no bytes to share
      if begin < reach:
        raise CheckpointError(f"{self.path}: tensors {last!r} and {name!r} overlap in the file "
                              "(their data_offsets share bytes): the file is corrupt or crafted")
      reach, last = end, name

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in _DTYPES:
      raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    start, stop = info["data_offsets"]
    raw = self._mmap[self.data_start + start : self.data_start + stop]
    return np.frombuffer(raw, dtype=np.dtype(_DTYPES[info["dtype"]])).reshape(tuple(info["shape"]))


def _is_count(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SafetensorsSource(TensorSource):
  """A single `model.safetensors`, or shards listed by `model.safetensors.index.json`."""

  def __init__(self, files: Iterable[str | os.PathLike]):
    self._files: dict[str, SafetensorsFile] = {}
    self._where: dict[str, SafetensorsFile] = {}
    for path in files:
      sf = SafetensorsFile(path)
      self._files[sf.path] = sf
      for name in sf.header:
        if name in self._where:
          raise CheckpointError(f"tensor {name!r} appears in both {self._where[name].path} and {sf.path}")
        self._where[name] = sf

  @classmethod
  def from_dir(cls, directory: str | os.PathLike) -> SafetensorsSource:
    d = Path(directory)
    index = d / "model.safetensors.index.json"
    if index.exists():
      return cls(_shards(index))
    files = sorted(d.glob("*.safetensors"))
    if not files:
      raise CheckpointError(f"{d}: no *.safetensors files")
    return cls(files)

  def names(self) -> set[str]:
    return set(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name].header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    return self._where[name].get(name)

  def file_of(self, name: str) -> str:
    return self._where[name].path


def _shards(index: Path) -> list[str]:
  """The shard files `model.safetensors.index.json` lists, all inside its folder: an index that
  names `../x`, an absolute path or a symlink out of the folder is refused (it would make jaxtune
  read any file as weights). A hub download's shards are symlinks into the cache's blobs folder,
  which is the model's own."""
  d = index.parent
  content = read_json(index, missing="not found")
  weight_map = content.get("weight_map") if isinstance(content, dict) else None
  if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
    raise CheckpointError(f"{index}: no 'weight_map' object of tensor name -> shard file name")
  roots = [d.resolve()]
  if roots[0].parent.name == "snapshots":  # huggingface_hub's cache: snapshots/<rev>/ -> blobs/
    roots.append(roots[0].parent.parent / "blobs")
  files = {}
  for name, shard in weight_map.items():
    if shard not in files:
      target = (d / shard).resolve()
      if Path(shard).is_absolute() or ".." in Path(shard).parts or not any(
          target.is_relative_to(r) for r in roots):
        raise CheckpointError(
          f"{index}: tensor {name!r} points outside the model folder ({shard!r} is {target}); "
          f"shard files must be inside {d}")
      files[shard] = str(d / shard)
  missing = sorted(f for f in files.values() if not os.path.exists(f))
  if missing:
    raise CheckpointError(f"{index}: lists shard files that do not exist: {missing}")
  return sorted(files.values())


class PickleSource(TensorSource):
  """`pytorch_model*.bin` (pickle): loads whole files, so only with allow_pickle=True."""

  def __init__(self, files: Iterable[str | os.PathLike]):
    import torch  # optional: only needed for legacy checkpoints

    self._tensors: dict[str, np.ndarray] = {}
    self._where: dict[str, str] = {}
    for path in files:
      sd = torch.load(path, map_location="cpu", weights_only=True)
      for k, v in sd.items():
        self._tensors[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        self._where[k] = str(path)

  def names(self) -> set[str]:
    return set(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._tensors[name].shape)

  def get(self, name: str) -> np.ndarray:
    return self._tensors[name]

  def file_of(self, name: str) -> str:
    return self._where[name]


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata=None):
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  arrays = {}
  for name, arr in tensors.items():
    arr = np.ascontiguousarray(arr)
    if arr.dtype not in _NAMES:
      raise CheckpointError(f"cannot write tensor {name!r} of dtype {arr.dtype} to safetensors")
    header[name] = {
      "dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
      "data_offsets": [offset, offset + arr.nbytes],
    }
    offset += arr.nbytes
    arrays[name] = arr
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the format aligns data to 8 bytes
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in arrays.values():
      f.write(arr.tobytes())
  os.replace(tmp, path)  # never leave a half-written file under the final name


def write_sharded(
  out_dir: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
  max_shard_bytes: int = MAX_SHARD_BYTES,
) -> list[str]:
  """Write `model.safetensors`, or numbered shards plus an index past `max_shard_bytes`.

  Streams: each shard is written as soon as it is full, so the host holds one shard at most.
  """
  out = Path(out_dir)
  written: list[tuple[str, list[str]]] = []  # (temporary file, its tensor names)
  shard: dict[str, np.ndarray] = {}
  size = total = 0

  def flush():
    tmp = out / f".shard-{len(written):05d}.safetensors"
    write_safetensors(tmp, shard)
    written.append((str(tmp), list(shard)))

  for name, arr in tensors:
    if shard and size + arr.nbytes > max_shard_bytes:
      flush()
      shard, size = {}, 0
    shard[name] = arr
    size += arr.nbytes
    total += arr.nbytes
  flush()
  if len(written) == 1:
    os.replace(written[0][0], out / "model.safetensors")
    return ["model.safetensors"]
  names = [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
  weight_map = {}
  for fname, (tmp, keys) in zip(names, written):
    os.replace(tmp, out / fname)
    weight_map.update({k: fname for k in keys})
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  return names
