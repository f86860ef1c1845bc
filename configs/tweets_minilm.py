"""Three-class tweet sentiment on noisy crowd labels: the real MiniLM-L6 on the builtin 'tweets'.

Train is 33,158 tweets as scraped (mojibake, copies, retweets, raters who disagreed); validation
and test are 2,500 trustworthy rows each (agreed, no copy anywhere, so no leak: see
jaxtune/data/tweets.py). Classes are imbalanced (test: 1,497 negative / 704 neutral / 299
positive), so macro F1 picks the best checkpoint and per-class recall is in results.json.

Variants (`configs/tweets_minilm.py:<variant>[,quick]`), each adding one data-quality step to
the one before, so the data-quality table is one loop over them:
  raw           the train rows as scraped (the default)
  clean         + data.clean (mojibake, HTML entities, spaces; label spelling)
  dedup         + data.dedup='near' (copies within train; none reach validation/test by design)
  confidence    + each row's loss weighted by the raters' agreement (data.weight_column)
  threshold     as confidence, but rows under 0.6 agreement dropped instead of weighted
  label_errors  + rows confident learning flags as mislabelled dropped (data.label_errors)
  balance       + balanced class weights (data.balance='class_weights')
'quick' (combinable) trains on a 1,000-row seeded subset of each split for a smoke run.
'table' (combinable) is the data-quality table's recipe, sized for a 2-core CPU (~5 min a run):
one epoch over a fixed 3,000-row train subset (data.max_train_rows: the same rows for every
variant and seed, drawn before any quality step), no evaluation until the end (a 2,500-row
validation pass costs ~50 training steps here), the last weights scored on the whole 2,500-row
validation and test splits. Smaller than the default recipe, so its scores are lower; it
compares the variants with each other, not with the full-size runs.
'pool' (with 'table') keeps the budget of 3,000 train rows but draws them from what the quality
steps kept of the whole train split (data.max_kept_train_rows): the quality steps choose which
rows the budget is spent on instead of only dropping from a fixed draw (raw: the same rows).
'agreed' (from 'confidence' on) keeps only the rows every rater agreed on (data.min_confidence=1)
instead of weighting rows by agreement: 'balance,table,pool,agreed' is the table's best pipeline.
"""

from jaxtune import config as jt_config
from jaxtune.data import assets
from jaxtune.errors import ConfigError

STEPS = ("raw", "clean", "dedup", "confidence", "label_errors", "balance")
ONE_OF = (*STEPS, "threshold")  # the data-quality step: one of these
VARIANTS = (*ONE_OF, "quick", "table", "pool", "agreed")
TABLE_ROWS = 3000  # the table's train budget, drawn before ('table') or after ('pool') the steps


def get_config(arg=None):
  variants = jt_config.known_variants("configs/tweets_minilm.py", arg, VARIANTS, one_of=ONE_OF)
  c = jt_config.default()
  c.model.source = str(assets.minilm_dir())
  c.model.task = "seq_cls"
  c.model.num_labels = 3
  c.model.compute_dtype = "float32"  # CPU: bfloat16 matmuls are emulated and slower

  c.data.kind = "classification"
  c.data.source = "tweets"  # implies validation/test 'tweets:validation', 'tweets:test'
  c.data.label_column = "sentiment"
  c.data.label_names = "negative,neutral,positive"
  c.data.seq_len = 64  # tweets: 99.9% fit

  c.train.epochs = 2.0
  c.train.batch_size = 32
  c.train.length_buckets = 4
  c.train.eval_every = 200
  c.train.eval_batch_size = 128
  c.train.log_every = 20
  c.train.early_stopping_patience = 5

  # sentiment_minilm's optimiser (layer-wise decay: the new head moves fast, lower layers barely).
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-4
  c.optim.layerwise_lr_decay = 0.8
  c.optim.weight_decay = 0.01
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 100
  c.optim.grad_clip_norm = 1.0

  c.checkpoint.every_steps = 200
  c.checkpoint.best_metric = "eval/f1_macro"
  c.checkpoint.best_mode = "max"
  c.checkpoint.keep_best = 1
  c.checkpoint.keep_last = 1

  step = next((v for v in ONE_OF if v in variants), "raw")
  upto = STEPS.index("confidence") if step == "threshold" else STEPS.index(step)
  if "agreed" in variants and upto < STEPS.index("confidence"):
    raise ConfigError(f"configs/tweets_minilm.py:{arg}: 'agreed' changes the confidence step, which "
                      f"'{step}' does not reach; add it to confidence, label_errors or balance")
  if upto >= STEPS.index("clean"):
    c.data.clean = True
  if upto >= STEPS.index("dedup"):
    c.data.dedup = "near"
  if upto >= STEPS.index("confidence"):
    # 5,460 train rows have no agreement figure: weighted as a split vote, not as unanimous.
    c.data.missing_confidence = "0.5"
    if "agreed" in variants:
      c.data.min_confidence = 1.0  # only the rows every rater agreed on
    elif step == "threshold":
      c.data.min_confidence = 0.6
    else:
      c.data.weight_column = "confidence"
  if upto >= STEPS.index("label_errors"):
    c.data.label_errors = "drop"
  if upto >= STEPS.index("balance"):
    c.data.balance = "class_weights"

  if "table" in variants:
    c.data.max_train_rows = TABLE_ROWS
    c.train.epochs = 1.0  # 94 steps
    c.train.eval_every = 0
    c.train.train_metric_rows = 0
    c.train.early_stopping_patience = 0
    c.optim.warmup_steps = 10
    c.checkpoint.every_steps = 0
  if "pool" in variants:
    # The same budget, drawn from what the quality steps kept of all 33,158 train rows
    # (data.max_kept_train_rows) instead of before them: raw draws the very same rows.
    c.data.max_train_rows = 0
    c.data.max_kept_train_rows = TABLE_ROWS
  if "quick" in variants:
    c.data.max_rows = 1000
    c.train.eval_every = 20
    c.optim.warmup_steps = 10
  return c
