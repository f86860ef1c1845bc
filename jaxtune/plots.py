"""Figures of a run's results drawn with matplotlib: the confusion matrix for TensorBoard.

Figures are built on matplotlib's object API with the Agg canvas, never through pyplot, so
drawing one during training neither picks nor changes the process's matplotlib backend and
leaves no figure registered in pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Past this many classes the cells are too small for their counts to be read: colour only.
MAX_ANNOTATED_CLASSES = 30


def confusion_matrix_figure(confusion, label_names: Sequence[str] = (), title: str = ""):
  """A ``matplotlib.figure.Figure``: rows the true class, columns the predicted one, each cell
  its count (coloured by its share of the true class, so rare classes show as clearly as
  frequent ones), class names on both axes (``0..n-1`` without ``label_names``)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  counts = np.asarray(confusion, dtype=np.int64)
  n = counts.shape[0]
  names = [str(x) for x in label_names] if len(label_names) == n else [str(i) for i in range(n)]
  rows = counts.sum(axis=1, keepdims=True)
  share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
  side = min(3.0 + 0.45 * n, 16.0)  # inches; grows with the classes up to a readable cap
  fig = Figure(figsize=(side + 1.2, side), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  ax.set_xticks(range(n), names, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center")
  ax.set_yticks(range(n), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  if n <= MAX_ANNOTATED_CLASSES:
    for i in range(n):
      for j in range(n):
        ax.text(
          j,
          i,
          str(counts[i, j]),
          ha="center",
          va="center",
          color="white" if share[i, j] > 0.5 else "black",
        )
  fig.tight_layout()
  return fig


def figure_rgb(fig) -> np.ndarray:
  """The figure drawn as an ``(H, W, 3)`` uint8 array (what TensorBoard's image tab takes)."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
