"""Sentiment classification: the real all-mpnet-base-v2 encoder on 10,605 Rotten Tomatoes snippets.

The same data and seeded 80/10/10 split as configs/sentiment_minilm.py, on a 12-layer,
768-wide MPNet (109.5M parameters, about 8x MiniLM-L6's compute per token). Fetch the weights
first (400 MB, not part of the default asset fetch):

  python -m jaxtune.data.assets fetch mpnet
  jaxtune train --config=configs/sentiment_mpnet.py --workdir=DIR

The classifier reads the mean of the last hidden states (model.pooling='mean'), the pooling
the sentence-transformers model was trained with; its [CLS] pooler was never trained. The
export is then a sentence-transformers directory (hf.sbert). The best checkpoint by validation
accuracy is evaluated on the test split at the end (workdir/results.json).

Variants (`configs/sentiment_mpnet.py:<arg>`): 'quick' trains on a 500-example subset, for smoke
tests. On a GPU/TPU add --config.model.compute_dtype=bfloat16.
"""

from jaxtune import config as jt_config
from jaxtune.data import assets


def get_config(arg=None):
  variants = jt_config.known_variants("configs/sentiment_mpnet.py", arg, ("quick",))
  c = jt_config.default()
  c.model.source = str(assets.mpnet_dir())
  c.model.task = "seq_cls"
  c.model.num_labels = 2
  c.model.pooling = "mean"
  c.model.compute_dtype = "float32"  # CPU: bfloat16 matmuls are emulated and slower

  c.data.kind = "classification"
  c.data.source = "rotten_tomatoes"
  c.data.seq_len = 64
  c.data.split = "0.8,0.1,0.1"
  c.data.split_seed = 0

  c.train.epochs = 2.0
  c.train.batch_size = 32
  # Snippets average 27 of 64 tokens: batches of similar length, trimmed to 16/32/48/64.
  c.train.length_buckets = 4
  c.train.eval_every = 100
  c.train.eval_batch_size = 128
  c.train.log_every = 20
  c.train.early_stopping_patience = 5

  c.optim.name = "adamw"
  # Layer-wise decay over 12 layers: 0.9**11 = 0.31 of the top rate for the lowest layer (0.8,
  # MiniLM's over 6, would nearly freeze the lower half here). Not yet tuned on this model.
  c.optim.learning_rate = 1e-4
  c.optim.layerwise_lr_decay = 0.9
  c.optim.weight_decay = 0.01
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 80
  c.optim.grad_clip_norm = 1.0

  c.checkpoint.every_steps = 200
  c.checkpoint.best_metric = "eval/accuracy"
  c.checkpoint.best_mode = "max"
  c.checkpoint.keep_best = 1
  c.checkpoint.keep_last = 1

  if "quick" in variants:
    c.data.max_rows = 500
    c.train.epochs = 2.0
    c.optim.learning_rate = 5e-5
    c.optim.layerwise_lr_decay = 1.0
    c.train.eval_every = 10
    c.optim.warmup_steps = 5
  return c
