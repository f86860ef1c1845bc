"""A tiny random Llama-style model on generated text: a full run in seconds on a laptop CPU.

The model, data and run are all small enough for tests to use this recipe directly.
"""

from jaxtune import config as jt_config


def get_config(arg=None):
  jt_config.known_variants("configs/tiny.py", arg)
  c = jt_config.default()
  c.model.source = "preset:tiny-llama"
  c.model.task = "causal_lm"
  c.model.compute_dtype = "float32"  # CPU: bfloat16 math is emulated and slower
  c.data.kind = "synthetic"
  c.data.seq_len = 64
  c.data.train_rows = 1024
  c.data.eval_rows = 64
  c.train.steps = 60
  c.train.batch_size = 16
  c.train.log_every = 10
  c.train.eval_every = 30
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 10
  c.optim.schedule = "cosine"
  c.checkpoint.every_steps = 20
  return c
