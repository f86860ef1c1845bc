"""`jaxtune train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.a.b=value]`.

Rerunning the same command on an existing workdir resumes from its last checkpoint; a
different config or data is refused unless --allow_config_change. One run per workdir at a
time (the workdir's jaxtune.lock names the run that holds it).
"""

from __future__ import annotations

import logging

from absl import flags
from ml_collections import config_flags

from jaxtune import config as jt_config
from jaxtune import distributed, trackers
from jaxtune.cli import run_app

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Recipe file (configs/<recipe>.py[:variant]); override fields with --config.a.b=v.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_ALLOW_CHANGE = flags.DEFINE_boolean(
  "allow_config_change", False, "Resume a run with a different config or data (hyperparameters "
  "such as the learning rate; recorded in run.json). Shapes (model, labels, LoRA) never change.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every file operation at INFO through absl; keep the console for our own progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  # Keys set with --config.a.b=v that this run would not read are refused, before anything runs.
  jt_config.check_ignored(_CONFIG.value, config_flags.get_override_values(flags.FLAGS["config"]))
  trackers.name_experiment(_CONFIG.value, flags.FLAGS["config"].config_filename)
  distributed.maybe_initialize()
  from jaxtune import train

  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                    allow_config_change=_ALLOW_CHANGE.value,
                                    recipe=flags.FLAGS["config"].config_filename)
  final = {k: v for k, v in result["eval"].items() if isinstance(v, int | float)}
  print(f"done: step {result['step']}; final validation: {final}")


def run(argv):
  run_app(__name__, main, argv)
