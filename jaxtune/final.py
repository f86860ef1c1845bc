"""The end of a training run: the best checkpoint's evaluation, results.json, the export.

The driver (`jaxtune.train`) calls `best_results` once the loop has ended and its last state is
saved: the best checkpoint (by checkpoint.best_metric; `jaxtune.finished_run` restores it) is
evaluated on validation and test, misclassified test examples go to errors.jsonl, the scores to
results.json and the trackers, and with export.enabled the weights to workdir/export.
"""

from __future__ import annotations

import json
import logging

import jax
from etils import epath

from jaxtune import evaluate, export, finished_run, metrics, sharding, step

log = logging.getLogger(__name__)


def best_results(config, workdir: epath.Path, mesh, ckpt, built, state: dict, s: int, splits,
                 run_eval, mw, last_val: dict | None = None) -> dict:
  """{best_step, val, test}: the best checkpoint's metrics (`state` is step `s`'s, the last).

  `run_eval(params, split) -> (metrics, details)`; `mw` is process 0's metric writer (else None).
  `last_val`: step `s`'s validation metrics, reused when the best is the last step (a whole
  validation pass saved: on a CPU it costs as much as many training steps). Closes `ckpt`.
  """
  is_main = jax.process_index() == 0
  ckpt.wait()
  best_step = ckpt.best_step() or s
  best_state = state
  if best_step != s:
    best_state = finished_run.restore_step(ckpt, best_step, built)
    log.info("restored the best checkpoint (step %d by %s) for the final evaluation", best_step,
             config.checkpoint.best_metric)
  ckpt.close()
  best_params = finished_run.eval_params(best_state)
  results: dict = {"best_step": int(best_step)}
  with sharding.use_mesh(mesh):
    if best_step == s and last_val is not None:
      results["val"] = last_val
    else:
      results["val"], _ = run_eval(best_params, "validation")
    if "test" in splits:
      results["test"], details = run_eval(best_params, "test")
      if details and is_main:
        n = evaluate.write_errors(workdir / "errors.jsonl", details,
                                  splits.examples.get("test"), splits.label_names)
        log.info("%d misclassified test examples written to %s", n, workdir / "errors.jsonl")
  if is_main:
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
  if mw is not None and "test" in results:  # the best checkpoint's test metrics, at the last step
    mw.write(s, {f"test/{k}": v for k, v in metrics.scalars(results["test"]).items()})
    write_confusion(mw, s, results["test"], "test", splits.label_names,
                    title=f"test, best checkpoint (step {best_step})")
  if config.export.enabled:
    export_model(config, workdir, built.train_graphdef, best_params, built.frozen, splits)
  return results


def export_model(config, workdir: epath.Path, graphdef, params, frozen, splits) -> epath.Path:
  """Write the (best, averaged if enabled) weights as an HF directory under workdir/export."""
  model = step.merge(graphdef, params, frozen)
  model.eval()
  return export.save(model, workdir / "export", splits.tokenizer, config, workdir=workdir,
                     **_EXPORT_FOLDER)


# The driver's own export folder under the rule of jaxtune.outputs, without an --overwrite.
_EXPORT_FOLDER = dict(flag="export.enabled", hint=(
  "move them out of the folder, or set export.enabled=False and export elsewhere with "
  "`jaxtune export --out=DIR`"))


def export_folder(workdir: epath.Path):
  """The checked workdir/export folder, refused at the start of a run that would export into
  files jaxtune did not write."""
  return export.output_folder(workdir / "export", workdir, **_EXPORT_FOLDER)


def write_confusion(mw, s: int, res: dict, prefix: str, label_names, title: str = "") -> None:
  """Classification: the confusion matrix as an image in TensorBoard (`<prefix>/confusion_matrix`)."""
  if "confusion" not in res or not mw.has_tensorboard:  # drawing costs ~0.1 s: only for a reader
    return
  from jaxtune import plots  # matplotlib: imported by classification runs only

  title = title or f"validation, step {s}"
  fig = plots.confusion_matrix_figure(res["confusion"], label_names, title=title)
  mw.write_image(s, f"{prefix}/confusion_matrix", plots.figure_rgb(fig))
