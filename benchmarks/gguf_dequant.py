"""GGUF dequantization speed: the gguf package's `gguf.quants.dequantize` per ggml type, and
whole-array numpy rewrites of Q8_0 and Q4_K against it (why jaxtune calls the package).

Each type dequantizes one 4096 x 2560 tensor (10.5M elements): quantized by the package where
it can, else random blocks of the type's layout (tests/hf/gguf_files.py). The two rewrites are
checked equal to the package's output before they are timed. Median of `--repeats` runs.

  python benchmarks/gguf_dequant.py [--repeats=5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def q8_0(blocks: np.ndarray) -> np.ndarray:
  """block_q8_0: f16 d, 32 x int8; y = d * q. Whole array at once."""
  b = blocks.reshape(-1, 34)
  d = b[:, :2].copy().view(np.float16).astype(np.float32)
  return (d * b[:, 2:].view(np.int8)).reshape(blocks.shape[0], -1)


def q4_k(blocks: np.ndarray) -> np.ndarray:
  """block_q4_K: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) x 8, 128 bytes of nibbles."""
  b = blocks.reshape(-1, 144)
  n = b.shape[0]
  d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
  dmin = b[:, 2:4].copy().view(np.float16).astype(np.float32)
  s = b[:, 4:16]
  # get_scale_min_k4: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins);
  # 4-7 from the nibbles of bytes 8-11 plus the top 2 bits of bytes 0-3 / 4-7.
  sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=1)
  mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
  qs = b[:, 16:].reshape(n, 4, 1, 32)
  q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
  y = (d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]
  return y.reshape(blocks.shape[0], -1)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()

  import gguf

  from jaxtune.hf.gguf import DEQUANTIZED
  from tests.hf.gguf_files import encode

  rng = np.random.default_rng(0)
  x = 0.1 * rng.standard_normal((4096, 2560), np.float32)
  ours = {"Q8_0": q8_0, "Q4_K": q4_k}

  def timed(fn, data):
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      fn(data)
      times.append(time.perf_counter() - t0)
    return statistics.median(times)

  rows = {}
  for name in DEQUANTIZED:
    t = gguf.GGMLQuantizationType[name]
    data = encode(x, t, rng)
    row = {"gguf_s": round(timed(lambda a, t=t: gguf.quants.dequantize(a, t), data), 4)}
    if name in ours:
      np.testing.assert_array_equal(ours[name](data), gguf.quants.dequantize(data, t))
      row["numpy_rewrite_s"] = round(timed(ours[name], data), 4)
    rows[name] = row
    print(f"{name:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
  print(json.dumps({"elements": x.size, "repeats": args.repeats, "types": rows}))


if __name__ == "__main__":
  main()
