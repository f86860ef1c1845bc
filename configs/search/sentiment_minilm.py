"""Search on configs/sentiment_minilm.py: learning rate, weight decay and warmup.

Objective: validation accuracy. The ranges hold the recipe's own values (learning rate 2e-4,
weight decay 0.01, warmup 80; 'quick': 1e-4, 0.01, 5), which run first (trial 0, `baseline`), so
the leaderboard compares the search against the recipe at the same budget. Budget per trial:
150 steps with an evaluation every 50 (pruning by the median).

Variants, comma-separated: an algorithm ('tpe' default, 'random', 'grid', 'gp', 'pbt'; PBT
searches only what the population can trace: learning rate and weight decay) and 'quick'
(4 trials of 30 steps, for configs/sentiment_minilm.py:quick on a small CPU).
"""

from jaxtune.config import known_variants
from jaxtune.tune import space
from jaxtune.tune.space import intrange, loguniform, uniform


def get_config(arg=None):
  args = known_variants("configs/search/sentiment_minilm.py", arg, (*space.ALGORITHMS, "quick"),
                        one_of=space.ALGORITHMS)
  c = space.default()
  c.space["optim.learning_rate"] = loguniform(1e-5, 3e-4)
  c.space["optim.weight_decay"] = uniform(0.0, 0.1)
  c.objective.metric = "eval/accuracy"
  c.objective.direction = "maximize"
  c.algorithm = next(iter(args & set(space.ALGORITHMS)), "tpe")
  quick = "quick" in args
  if c.algorithm != "pbt":
    # Up to the recipe's own warmup (80 steps; 5 in 'quick'), so its baseline trial can run.
    c.space["optim.warmup_steps"] = intrange(0, 10 if quick else 80)
  c.pruner = "median"
  c.budget.trials = 4 if quick else 8
  c.trial.steps = 30 if quick else 150
  c.trial.eval_every = 10 if quick else 50
  c.pbt.population = 4
  c.pbt.interval = c.trial.eval_every
  c.pbt.generations = 3
  return c
