"""`jaxtune train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.a.b=value]`.

Rerunning the same command on an existing workdir resumes from its last checkpoint.
"""

from __future__ import annotations

import logging

from absl import flags
from ml_collections import config_flags

from jaxtune import config as jt_config
from jaxtune import distributed
from jaxtune.cli import run_app

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Recipe file (configs/<recipe>.py[:variant]); override fields with --config.a.b=v.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every file operation at INFO through absl; keep the console for our own progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  # Keys set with --config.a.b=v that this run would not read are refused, before anything runs.
  jt_config.check_ignored(_CONFIG.value, config_flags.get_override_values(flags.FLAGS["config"]))
  distributed.maybe_initialize()
  from jaxtune import train

  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  final = {k: v for k, v in result["eval"].items() if isinstance(v, int | float)}
  print(f"done: step {result['step']}; final validation: {final}")


def run(argv):
  run_app(__name__, main, argv)
