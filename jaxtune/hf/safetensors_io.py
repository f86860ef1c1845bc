"""Tensor sources (safetensors, pickled torch) read lazily one tensor at a time, and a writer.

We parse safetensors ourselves (an 8-byte header length, a JSON header, raw bytes) over a
memory map: nothing is read before it is asked for, bfloat16 works through ml_dtypes, and a
truncated or corrupt file is caught with the file and tensor named.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxtune.hf.errors import CheckpointError

_DTYPES = {
  "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
  "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
  "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
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
  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    size = os.path.getsize(self.path)
    try:
      with open(self.path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
          raise ValueError(f"header length {n} exceeds the file size {size}")
        header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{self.path}: not a valid safetensors file ({e})") from e
    header.pop("__metadata__", None)
    self.header = header
    self.data_start = 8 + n
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if self.data_start + end > size:
      bad = [k for k, v in header.items() if self.data_start + v["data_offsets"][1] > size]
      raise CheckpointError(
        f"{self.path}: file is truncated ({size} bytes, header needs {self.data_start + end}); "
        f"tensors cut off: {', '.join(sorted(bad)[:5])}"
      )
    self._mmap = None

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in _DTYPES:
      raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    start, stop = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    shape = tuple(info["shape"])
    if (stop - start) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
      raise CheckpointError(
        f"{self.path}: tensor {name!r} has {stop - start} bytes, but shape {shape} "
        f"{info['dtype']} needs {dtype.itemsize * int(np.prod(shape))}"
      )
    raw = self._mmap[self.data_start + start : self.data_start + stop]
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


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
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted({str(d / f) for f in weight_map.values()})
      missing = [f for f in files if not os.path.exists(f)]
      if missing:
        raise CheckpointError(f"{index}: lists shard files that do not exist: {missing}")
      return cls(files)
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
