"""`jaxtune train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.a.b=value]`.

Rerunning the same command on an existing workdir resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from absl import flags
from ml_collections import config_flags

from jaxtune.cli import run_app

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Recipe file (configs/<recipe>.py[:variant]); override fields with --config.a.b=v.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


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


def maybe_initialize_distributed() -> None:
  """Join a multi-process run when launched as one (TPU pod slice, SLURM, explicit env)."""
  import jax

  args = distributed_args(os.environ)
  if args is not None:
    jax.distributed.initialize(**args)


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every file operation at INFO through absl; keep the console for our own progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  maybe_initialize_distributed()
  from jaxtune import train

  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  final = {k: v for k, v in result["eval"].items() if isinstance(v, int | float)}
  print(f"done: step {result['step']}; final validation: {final}")


def run(argv):
  run_app(__name__, main, argv)
