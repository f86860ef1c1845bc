"""Search on configs/sentiment_mpnet.py: learning rate, layer-wise lr decay and warmup.

Objective: validation accuracy. The ranges hold the recipe's own values (learning rate 1e-4,
layer-wise decay 0.9, warmup 26), which run first (trial 0, `baseline`). A trial of the full
recipe (265 steps, one epoch) takes about 27 minutes on 2 CPU cores, so the budget per trial is
106 steps (two fifths of the epoch, with the cosine schedule compressed to them) with an
evaluation every 53, pruned by the median; the best trial's values are then run as the whole
recipe:

  jaxtune tune --config=configs/sentiment_mpnet.py --search=configs/search/sentiment_mpnet.py \\
    --workdir=DIR
  jaxtune train --config=configs/sentiment_mpnet.py --workdir=DIR2 --config.optim.learning_rate=...

Variants: an algorithm ('tpe' default, 'random', 'grid', 'gp'; TPE and GP draw at random until
they have max(2, trials // 4) trials).
"""

from jaxtune.config import known_variants
from jaxtune.tune import space
from jaxtune.tune.space import intrange, loguniform, uniform

ALGORITHMS = tuple(a for a in space.ALGORITHMS if a != "pbt")  # llrd and warmup are not traceable


def get_config(arg=None):
  args = known_variants("configs/search/sentiment_mpnet.py", arg, ALGORITHMS, one_of=ALGORITHMS)
  c = space.default()
  c.space["optim.learning_rate"] = loguniform(3e-5, 3e-4)
  c.space["optim.layerwise_lr_decay"] = uniform(0.7, 1.0)
  c.space["optim.warmup_steps"] = intrange(0, 53)
  c.objective.metric = "eval/accuracy"
  c.objective.direction = "maximize"
  c.algorithm = next(iter(args & set(ALGORITHMS)), "tpe")
  c.pruner = "median"
  c.budget.trials = 4
  c.trial.steps = 106
  c.trial.eval_every = 53
  return c
