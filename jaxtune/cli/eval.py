"""`jaxtune eval --workdir=DIR --data=FILE [--name=NAME] [--text_column=.. --label_column=..]`.

Evaluates a finished run's best weights (averaged weights when the run kept them) on any data
file of the run's task and writes `workdir/eval_NAME.json` with the same metric keys as
results.json (misclassified examples go to `workdir/eval_NAME_errors.jsonl`). NAME is a plain
name; files of that name jaxtune did not write are kept unless --overwrite.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import flags

from jaxtune.cli import run_app

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished (or interrupted) run's workdir.")
_DATA = flags.DEFINE_string("data", None, "Data file (.jsonl/.json/.csv/.tsv/.parquet/.txt), builtin or hub name.")
_NAME = flags.DEFINE_string("name", "", "Name of the result file (default: the data file's stem).")
_TEXT = flags.DEFINE_string("text_column", "", "Text column, if it differs from the run's.")
_LABEL = flags.DEFINE_string("label_column", "", "Label column, if it differs from the run's.")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step to evaluate (-1: the best, else the latest).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace eval_NAME files jaxtune did not write.")
flags.mark_flags_as_required(["workdir", "data"])


def output_folder(workdir: str | Path, data: str, name: str, *, overwrite: bool = False):
  """The checked outputs of an evaluation: eval_NAME.json and eval_NAME_errors.jsonl in the
  workdir (`jaxtune.outputs`), never over the data file or the run's own files."""
  from jaxtune import outputs

  outputs.check_name(name, "--name")
  w = Path(workdir)
  return outputs.Folder(
    w, command="jaxtune eval", flag="--name", overwrite=overwrite, own=False,
    inputs=[data, w / "checkpoints", w / "config.json", w / "run.json"],
    expected=(f"eval_{name}.json", f"eval_{name}_errors.jsonl"))


def evaluate_file(workdir: str | Path, data: str, *, name: str = "", text_column: str = "",
                  label_column: str = "", step: int = -1, overwrite: bool = False) -> dict:
  import jax

  from jaxtune import build, evaluate, finished_run, objectives, sharding, workdir_lock
  from jaxtune import config as jt_config

  workdir = Path(workdir_lock.require(workdir))
  name = name or Path(data).stem
  folder = output_folder(workdir, data, name, overwrite=overwrite)
  config = jt_config.read_run_config(workdir)
  finished_run.require_checkpoints(workdir)  # before the data is read
  if text_column:
    config.data.text_column = text_column
  if label_column:
    config.data.label_column = label_column
  # The run's label order, so predictions mean the same classes as in training.
  config.data.label_names = ",".join(finished_run.label_names(workdir))
  split = objectives.get(config).eval_split(config, data, workdir)
  restored = finished_run.restore(workdir, config, step=step,
                                  num_labels=config.model.num_labels or split.num_labels)
  eval_fn = build.make_eval_fn(restored.built.eval_graphdef, config, restored.mesh)
  with sharding.use_mesh(restored.mesh):
    res, details = evaluate.evaluate(
      eval_fn, restored.params, restored.built.frozen, split["eval"], task=config.model.task,
      mesh=restored.mesh, batch_size=config.train.eval_batch_size, label_names=split.label_names,
      length_buckets=config.train.get("length_buckets", 0))  # runs from before the key: off
  out = {"data": str(data), "step": restored.step, **res}
  if jax.process_index() == 0:
    folder.path(f"eval_{name}.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    if details:
      evaluate.write_errors(folder.path(f"eval_{name}_errors.jsonl"), details,
                            split.examples.get("eval"), split.label_names)
    folder.commit()
  return out


def main(argv):
  del argv
  out = evaluate_file(_WORKDIR.value, _DATA.value, name=_NAME.value, text_column=_TEXT.value,
                      label_column=_LABEL.value, step=_STEP.value, overwrite=_OVERWRITE.value)
  print(json.dumps({k: v for k, v in out.items() if not isinstance(v, list)}, indent=2, default=float))


def run(argv):
  run_app(__name__, main, argv)
