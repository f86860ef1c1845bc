"""An LLM as the three-class tweet classifier: SmolLM2-135M-Instruct (GGUF) with LoRA and a
classification head on the builtin noisy 'tweets' (configs/tweets_minilm.py's data, split and
data-quality variants; sentiment_smollm2_cls's model, adapters and optimiser).

  jaxtune train --config=configs/tweets_smollm2_cls.py:dedup,table --workdir=DIR

The decoder scores the last non-pad token of each row (as transformers'
`LlamaForSequenceClassification`); LoRA adapts the attention and MLP projections while the new
three-way `score` head trains in full. Variants are tweets_minilm's: one data-quality step
(raw, clean, dedup, confidence, threshold, label_errors, balance), 'table' (the data-quality
table's 3,000-row, one-epoch size) and 'quick'. Label-error detection still embeds the rows with
the frozen MiniLM encoder (data.label_error_encoder), whatever model trains.
On a GPU/TPU add --config.model.compute_dtype=bfloat16.
"""

from pathlib import Path

from jaxtune import config as jt_config
from jaxtune import recipes


def get_config(arg=None):
  minilm = recipes.module(Path(__file__).with_name("tweets_minilm.py"))
  jt_config.known_variants("configs/tweets_smollm2_cls.py", arg, minilm.VARIANTS, one_of=minilm.ONE_OF)
  c = minilm.get_config(arg)
  llm = recipes.beside(__file__, "sentiment_smollm2_cls")
  c.model = llm.model
  c.model.num_labels = 3
  c.lora = llm.lora
  c.export.merge_lora = True
  # sentiment_smollm2_cls's optimiser: adapters and a fresh head take a higher rate than a full
  # fine-tune, no weight decay, one rate for every layer (the base does not move).
  for key in ("learning_rate", "weight_decay", "layerwise_lr_decay"):
    c.optim[key] = llm.optim[key]
  c.train.eval_batch_size = llm.train.eval_batch_size
  return c
