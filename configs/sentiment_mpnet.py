"""Sentiment classification: the real all-mpnet-base-v2 encoder on 10,605 Rotten Tomatoes snippets.

configs/sentiment_minilm.py with another encoder: the same data, seeded 80/10/10 split, batches,
evaluation and checkpoint choice (taken from that recipe, so the two stay comparable), on a
12-layer, 768-wide MPNet (109.5M parameters, about 8x MiniLM-L6's compute per token). Fetch the
weights first (400 MB, not part of the default asset fetch):

  python -m jaxtune.data.assets fetch mpnet
  jaxtune train --config=configs/sentiment_mpnet.py --workdir=DIR

The classifier reads the mean of the last hidden states (model.pooling='mean'), the pooling
the sentence-transformers model was trained with; its [CLS] pooler was never trained. The
export is then a sentence-transformers directory (hf.sbert). The best checkpoint by validation
accuracy is evaluated on the test split at the end (workdir/results.json).

Variants (`configs/sentiment_mpnet.py:<arg>`): 'quick' trains on a 500-example subset, for smoke
tests. On a GPU/TPU add --config.model.compute_dtype=bfloat16.
"""

import importlib.util
from pathlib import Path

from jaxtune import config as jt_config
from jaxtune.data import assets


def _minilm():
  path = Path(__file__).with_name("sentiment_minilm.py")
  spec = importlib.util.spec_from_file_location("sentiment_minilm", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  variants = jt_config.known_variants("configs/sentiment_mpnet.py", arg, ("quick",))
  c = _minilm().get_config(arg)
  c.model.source = str(assets.mpnet_dir())
  c.model.pooling = "mean"
  # Layer-wise decay over 12 layers: 0.9**11 = 0.31 of the top rate for the lowest layer (0.8,
  # MiniLM's over 6, would nearly freeze the lower half here). Not yet tuned on this model.
  c.optim.learning_rate = 1e-4
  c.optim.layerwise_lr_decay = 0.9
  if "quick" in variants:
    c.optim.learning_rate = 5e-5
    c.optim.layerwise_lr_decay = 1.0
  return c
