"""Evaluation metrics computed on the host from summed losses and predictions."""

from __future__ import annotations

import math

import numpy as np

# What an evaluation reports per objective (`jaxtune.objectives`, `Objective.metric_names`),
# logged as eval/<name>: the names checkpoint.best_metric and a search's objective may pick from.
# A classifier also reports precision/<label>, recall/<label> and f1/<label> per class.
LM_METRICS = ("loss", "perplexity", "tokens")
CLASSIFICATION_METRICS = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro",
                          "examples")
PER_CLASS_METRICS = ("precision", "recall", "f1")


def lm_metrics(loss_sum: float, weight: float) -> dict[str, float]:
  loss = loss_sum / max(weight, 1e-9)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": weight}


def classification_metrics(
  predictions: np.ndarray, labels: np.ndarray, num_labels: int, label_names=None,
) -> dict:
  """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix.

  A class with no predictions (or no examples) has precision (recall) 0, as scikit-learn's
  zero_division=0; macro averages include every class.
  """
  predictions = np.asarray(predictions).astype(int)
  labels = np.asarray(labels).astype(int)
  confusion = np.zeros((num_labels, num_labels), np.int64)  # rows: true label, columns: predicted
  np.add.at(confusion, (labels, predictions), 1)
  tp = np.diag(confusion).astype(float)
  predicted = confusion.sum(axis=0)
  actual = confusion.sum(axis=1)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
  out: dict = {
    "accuracy": float(tp.sum() / max(len(labels), 1)),
    "precision_macro": float(precision.mean()),
    "recall_macro": float(recall.mean()),
    "f1_macro": float(f1.mean()),
    "examples": len(labels),
  }
  for i, name in enumerate(names):
    out[f"precision/{name}"] = float(precision[i])
    out[f"recall/{name}"] = float(recall[i])
    out[f"f1/{name}"] = float(f1[i])
  out["confusion"] = confusion.tolist()
  return out


def scalars(metrics: dict) -> dict[str, float]:
  """The scalar entries (for metrics.jsonl and TensorBoard)."""
  return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float | np.number)}
