"""Joining a multi-process run: which jax.distributed.initialize arguments the environment implies.

Kept apart from the `jaxtune train` command so it can be imported (and tested) without that
command's absl flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def distributed_args(env: Mapping[str, str]) -> dict | None:
  """Arguments for jax.distributed.initialize, or None for a single-process run.

  JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (set by launch/gpu.sh) are passed
  explicitly with cluster detection off: under SLURM, detection would otherwise pin each
  process to one GPU, while launch/gpu.sh runs one process per machine over all its GPUs.
  Otherwise JAX detects the cluster itself (TPU pod slice, SLURM with one task per GPU,
  JAXTUNE_DISTRIBUTED=1 as set by launch/tpu_vm.sh).
  """
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  if all(env.get(n) for n in names):
    return {
      "coordinator_address": env[names[0]], "num_processes": int(env[names[1]]),
      "process_id": int(env[names[2]]), "cluster_detection_method": "deactivate",
    }
  explicit = "JAX_COORDINATOR_ADDRESS" in env or "COORDINATOR_ADDRESS" in env
  tpu_pod = env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
  slurm = int(env.get("SLURM_NTASKS", "1")) > 1
  if explicit or tpu_pod or slurm or env.get("JAXTUNE_DISTRIBUTED") == "1":
    return {}
  return None


def maybe_initialize() -> None:
  """Join a multi-process run when launched as one (TPU pod slice, SLURM, explicit env)."""
  import jax

  args = distributed_args(os.environ)
  if args is not None:
    jax.distributed.initialize(**args)
