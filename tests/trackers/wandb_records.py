"""Reads a W&B offline run's `run-<id>.wandb` file: the records W&B itself wrote, parsed with
W&B's own protobuf (`wandb_internal_pb2.Record`).

The file is W&B's LevelDB-style log (wandb 0.31 dropped its Python reader,
`wandb.sdk.internal.datastore`): a 7-byte header (`:W&B`, magic, version), then 32 KiB blocks
of chunks, each with a 7-byte header (CRC-32C, length, type: 1 full, 2 first, 3 middle,
4 last); a block's tail shorter than a chunk header is padding.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def records(path: str | Path) -> list:
  data = Path(path).read_bytes()
  assert data[:4] == b":W&B", f"{path} is not a W&B run file"
  out, pending, pos = [], b"", HEADER
  while pos + HEADER <= len(data):
    left = BLOCK - pos % BLOCK
    if left < HEADER:  # padding at the end of a block
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
    if length == 0 and kind == 0:  # zero-filled rest of a block
      pos += left
      continue
    pending += data[pos + HEADER:pos + HEADER + length]
    pos += HEADER + length
    if kind in (1, 4):  # a full record, or the last chunk of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      out.append(record)
      pending = b""
  return out


def run_file(workdir: Path) -> Path:
  """The one offline run file under `workdir/wandb`."""
  found = list(Path(workdir).glob("wandb/offline-run-*/run-*.wandb"))
  assert len(found) == 1, found
  return found[0]


def of_type(recs, kind: str) -> list:
  return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


def history(recs) -> list[dict]:
  """Each logged row as {key: value}, keys joined with '.' as W&B nests them."""
  return [{".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in h.item}
          for h in of_type(recs, "history")]


def summary(recs) -> dict:
  """The summary's final values."""
  out = {}
  for s in of_type(recs, "summary"):
    for u in s.update:
      out[".".join(u.nested_key) or u.key] = json.loads(u.value_json)
  return out
