"""`jaxtune train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.a.b=value]`.

Rerunning the same command on an existing workdir resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os

from absl import flags
from ml_collections import config_flags

from jaxtune.cli import run_app

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Recipe file (configs/<recipe>.py[:variant]); override fields with --config.a.b=v.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def maybe_initialize_distributed() -> None:
  """Join a multi-process run when launched as one (TPU pod slice, SLURM, explicit env)."""
  import jax

  explicit = "JAX_COORDINATOR_ADDRESS" in os.environ or "COORDINATOR_ADDRESS" in os.environ
  tpu_pod = int(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")) > 0
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  if explicit or tpu_pod or slurm:
    jax.distributed.initialize()


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
