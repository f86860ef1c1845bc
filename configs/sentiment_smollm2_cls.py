"""An LLM as a classifier: SmolLM2-135M-Instruct (GGUF) with LoRA and a classification head on
the 10,605 Rotten Tomatoes snippets, the split of sentiment_minilm.

The decoder scores the last token of each row that is not the pad id, as transformers'
`LlamaForSequenceClassification` does (rows are padded right with the tokenizer's pad,
SmolLM2's `<|im_end|>`); LoRA adapts the attention and MLP projections while the new `score`
head trains in full. The export (LoRA merged) loads in transformers as
`LlamaForSequenceClassification` and in `pipeline("text-classification")`, batches included.

Variants (`configs/sentiment_smollm2_cls.py:<arg>`): 'quick' trains 32 steps on 256 rows (and
scores 256 validation and test rows), for smoke tests; 'gemma3' swaps in Gemma 3 270M (GGUF, base model).
On a GPU/TPU add --config.model.compute_dtype=bfloat16.
"""

from jaxtune import config as jt_config
from jaxtune.data import assets


def get_config(arg=None):
  variants = jt_config.known_variants("configs/sentiment_smollm2_cls.py", arg, ("quick", "gemma3"))
  c = jt_config.default()
  c.model.source = str(assets.gemma3_gguf() if "gemma3" in variants else assets.smollm2_gguf())
  c.model.task = "seq_cls"
  c.model.num_labels = 2
  c.model.compute_dtype = "float32"  # CPU: bfloat16 matmuls are emulated and slower
  c.model.scan_layers = True  # one layer compiles, not 30: unrolled, the CPU compile ran >20 min

  # The data and split of sentiment_minilm, so the test figures compare.
  c.data.kind = "classification"
  c.data.source = "rotten_tomatoes"
  c.data.seq_len = 64
  c.data.split = "0.8,0.1,0.1"
  c.data.split_seed = 0

  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.05

  c.train.epochs = 1.0
  c.train.batch_size = 32
  c.train.length_buckets = 4  # snippets average 27 of 64 tokens
  c.train.eval_every = 50
  c.train.eval_batch_size = 64
  c.train.log_every = 10
  c.train.early_stopping_patience = 4

  c.optim.name = "adamw"
  c.optim.learning_rate = 5e-4  # LoRA adapters and a fresh head: higher than a full fine-tune
  c.optim.weight_decay = 0.0
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 20
  c.optim.grad_clip_norm = 1.0

  c.checkpoint.every_steps = 100
  c.checkpoint.best_metric = "eval/accuracy"
  c.checkpoint.best_mode = "max"
  c.checkpoint.keep_best = 1
  c.checkpoint.keep_last = 1
  c.export.merge_lora = True

  if "quick" in variants:
    c.data.max_rows = 256  # per split
    c.train.epochs = 2.0  # 32 steps
    c.train.batch_size = 16
    c.train.eval_every = 16
    c.train.eval_at_start = True  # the untrained head's accuracy, to see it learn
    c.train.eval_batch_size = 64
    c.train.train_metric_rows = 128
    c.train.log_every = 4
    c.optim.warmup_steps = 4
    c.checkpoint.every_steps = 16
  return c
