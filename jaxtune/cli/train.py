"""`jaxtune train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.a.b=value]`.

Configs: --config names a python recipe file whose get_config(arg) returns the run's config;
`PATH:variant` passes `variant` as arg (configs/sentiment_minilm.py:quick). Any field can be
overridden on the command line by its dotted key, --config.SECTION.KEY=VALUE, e.g.
  --config.train.steps=200 --config.optim.learning_rate=3e-4 --config.model.source=DIR
The value is read as the field's type: integers, numbers (1e-4), true/false (or
--noconfig.train.progress), text as is. A key the recipe lacks is an error naming the closest
keys. Every key, its default and its meaning: docs/config_reference.md.

Rerunning the same command on an existing workdir resumes from its last checkpoint; a
different config or data is refused unless --allow_config_change. One run per workdir at a
time (the workdir's jaxtune.lock names the run that holds it).

The console shows a progress bar and one line per evaluation (on stderr), then the best step
and the validation and test metrics as a table (on stdout).
"""

from __future__ import annotations

import time

from absl import flags
from ml_collections import config_flags

from jaxtune import config as jt_config
from jaxtune import console, distributed, trackers
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
  # Keys set with --config.a.b=v that this run would not read are refused, before anything runs.
  jt_config.check_ignored(_CONFIG.value, config_flags.get_override_values(flags.FLAGS["config"]))
  trackers.name_experiment(_CONFIG.value, flags.FLAGS["config"].config_filename)
  distributed.maybe_initialize()
  from jaxtune import train

  t0 = time.monotonic()
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                    allow_config_change=_ALLOW_CHANGE.value,
                                    recipe=flags.FLAGS["config"].config_filename)
  # Every process prints it (the same table: the results are global), so each host's log ends
  # with what the run achieved; process 0 alone wrote results.json.
  console.CONSOLE.print(console.run_summary(result, _CONFIG.value, _WORKDIR.value,
                                            time.monotonic() - t0), out=True)


def run(argv):
  run_app(__name__, main, argv)
