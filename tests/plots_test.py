"""jaxtune.plots: the confusion-matrix figure TensorBoard shows for classifiers."""

import numpy as np

from jaxtune import plots


def test_confusion_matrix_names_the_classes_and_counts_every_cell():
  confusion = [[5, 1, 0], [2, 7, 0], [0, 3, 9]]  # rows: true class, columns: predicted
  fig = plots.confusion_matrix_figure(confusion, ["negative", "neutral", "positive"], title="t")
  (ax, _) = fig.axes  # the matrix and its colour bar
  names = ["negative", "neutral", "positive"]
  assert [t.get_text() for t in ax.get_xticklabels()] == names
  assert [t.get_text() for t in ax.get_yticklabels()] == names
  assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
  # One count per cell, at (column, row) = (predicted, true).
  cells = {
    (round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts
  }
  assert cells == {(i, j): confusion[i][j] for i in range(3) for j in range(3)}
  rgb = plots.figure_rgb(fig)
  assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
  assert rgb.min() < 100 < 200 < rgb.max()  # something is drawn on a light background


def test_confusion_matrix_without_names_and_with_many_classes():
  fig = plots.confusion_matrix_figure(np.eye(3, dtype=int))
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2"]
  n = plots.MAX_ANNOTATED_CLASSES + 1  # too many cells to print counts in: colours only
  fig = plots.confusion_matrix_figure(np.eye(n, dtype=int), [f"c{i}" for i in range(n)])
  assert not fig.axes[0].texts
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()][-1] == f"c{n - 1}"
