"""Recommended XLA flags per platform, merged into XLA_FLAGS before JAX starts a backend.

XLA reads XLA_FLAGS once, when the first backend initialises, so `apply` must run before any
`jax.devices()` or computation (the CLI entry, jaxtune/main.py, calls it first thing). Flags the
user already set win: only flags whose name is absent from XLA_FLAGS are added. Set
JAXTUNE_NO_XLA_FLAGS=1 to add none.

GPU flags (the JAX GPU performance tips and NVIDIA's JAX-Toolbox / MaxText GPU defaults):

  --xla_gpu_enable_latency_hiding_scheduler=true
      schedule asynchronous work (collectives, copies) so it overlaps compute instead of
      running between kernels; the one flag JAX-Toolbox bakes into its images.
  --xla_gpu_enable_triton_gemm=false
      dense matmuls through cuBLAS(Lt) rather than Triton-generated GEMMs: for LLM-sized bf16
      matmuls cuBLAS is as fast or faster on H100, and skipping Triton's autotuning cuts compile
      time (JAX-Toolbox and MaxText GPU configs set it).
  --xla_gpu_enable_highest_priority_async_stream=true
      run collectives on the highest-priority CUDA stream, so a gradient all-reduce is not
      queued behind compute kernels (multi-GPU; harmless on one GPU).

CPU and TPU: none. Nothing measured on CPU helped jaxtune's train step, and TPU defaults are
already tuned by XLA.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import MutableMapping

OPT_OUT = "JAXTUNE_NO_XLA_FLAGS"

_RECOMMENDED: dict[str, tuple[str, ...]] = {
  "gpu": (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_highest_priority_async_stream=true",
  ),
  "cpu": (),
  "tpu": (),
}
# JAX_PLATFORMS names -> the key above.
_PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "cpu": "cpu", "tpu": "tpu"}


def recommended(platform: str) -> tuple[str, ...]:
  """The flags jaxtune recommends on `platform` ('gpu', 'cuda', 'rocm', 'cpu', 'tpu')."""
  key = _PLATFORM_ALIASES.get(platform.lower())
  if key is None:
    raise ValueError(f"xla_flags: unknown platform {platform!r}; one of {sorted(_PLATFORM_ALIASES)}")
  return _RECOMMENDED[key]


def detect_platform(environ: MutableMapping[str, str] | None = None) -> str:
  """The platform JAX will pick, found without starting JAX (which would freeze XLA_FLAGS).

  JAX_PLATFORMS (its first entry) decides when set; otherwise an NVIDIA driver on the machine
  means a GPU, and anything else is treated as CPU (no flags).
  """
  environ = os.environ if environ is None else environ
  first = environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
  if first:
    return _PLATFORM_ALIASES.get(first, first)
  if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0"):
    return "gpu"
  return "cpu"


def _missing(user_flags: str, flags: tuple[str, ...]) -> list[str]:
  names = {f.split("=", 1)[0] for f in shlex.split(user_flags)}
  return [f for f in flags if f.split("=", 1)[0] not in names]


def merge(user_flags: str, flags: tuple[str, ...]) -> str:
  """`user_flags` plus every flag in `flags` whose name the user has not set (theirs win)."""
  return " ".join([*shlex.split(user_flags), *_missing(user_flags, flags)])


def apply(environ: MutableMapping[str, str] | None = None, platform: str | None = None) -> tuple[str, ...]:
  """Merge the recommended flags into `environ['XLA_FLAGS']`; returns the flags added.

  Does nothing with JAXTUNE_NO_XLA_FLAGS=1 or on platforms without recommendations (CPU).
  """
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT, "") not in ("", "0"):
    return ()
  user = environ.get("XLA_FLAGS", "")
  added = _missing(user, recommended(platform or detect_platform(environ)))
  if added:
    environ["XLA_FLAGS"] = merge(user, tuple(added))
  return tuple(added)
