"""Chat SFT with LoRA: SmolLM2-135M-Instruct (GGUF) on human chit-chat conversations.

Offline: the GGUF weights and the conversations install from package registries
(jaxtune.data.assets). The loss covers assistant turns only; conversations are packed into
rows with segment ids so they never attend to each other. The starting model is evaluated
first, so metrics.jsonl holds the eval loss before and after.

Variants (`configs/sft_smollm2.py:<arg>`): 'quick' is a few steps on few conversations.
"""

from jaxtune import config as jt_config
from jaxtune.data import assets


def get_config(arg=None):
  variants = jt_config.known_variants("configs/sft_smollm2.py", arg, ("quick",))
  c = jt_config.default()
  c.model.source = str(assets.smollm2_gguf())
  c.model.task = "causal_lm"
  c.model.compute_dtype = "float32"  # CPU; use bfloat16 on GPU/TPU

  c.data.kind = "sft"
  c.data.source = "chitchat"
  c.data.sft_format = "chat"
  c.data.completion_only = True
  c.data.pack = True
  c.data.seq_len = 256
  c.data.max_rows = 400
  # A few conversations open with a first turn longer than a row: skip them, counted and listed
  # in workdir/skipped_rows.jsonl, rather than stop.
  c.data.on_bad_row = "skip"

  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.05

  c.train.steps = 60
  c.train.batch_size = 8
  c.train.eval_every = 30
  c.train.eval_at_start = True
  c.train.eval_batch_size = 8
  c.train.log_every = 5
  c.train.text_samples = 2  # greedy completions of 2 validation prompts in TensorBoard per eval

  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 6

  c.checkpoint.every_steps = 30
  c.checkpoint.best_metric = "eval/loss"
  c.checkpoint.best_mode = "min"

  if "quick" in variants:
    c.data.max_rows = 48
    c.data.seq_len = 128
    c.train.steps = 8
    c.train.eval_every = 0
    c.train.batch_size = 4
    c.train.eval_batch_size = 4
    c.optim.warmup_steps = 2
  return c
