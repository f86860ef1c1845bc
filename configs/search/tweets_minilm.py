"""Search on configs/tweets_minilm.py:<winner>,table: learning rate and layer-wise decay.

The data-quality table's last row (BENCHMARKS.md): a small search over the best variant at the
table's budget. Objective: validation macro F1 (the recipe's checkpoint metric). The ranges
hold the recipe's own values (learning rate 2e-4, layer-wise decay 0.8), which run first
(trial 0, `baseline`), so the leaderboard compares the search with the table's own run. Budget
per trial: 92 steps (one epoch of the 2,933 train rows left after dedup), evaluated at the end
only, as the table's runs are; so no pruning. 4 trials: ~20 min on a shared 2-core CPU.

Variants: an algorithm ('tpe' default, 'random', 'grid', 'gp').
"""

from jaxtune.config import known_variants
from jaxtune.tune import space
from jaxtune.tune.space import loguniform, uniform


def get_config(arg=None):
  algorithms = tuple(a for a in space.ALGORITHMS if a != "pbt")
  args = known_variants("configs/search/tweets_minilm.py", arg, algorithms, one_of=algorithms)
  c = space.default()
  c.space["optim.learning_rate"] = loguniform(5e-5, 5e-4)
  c.space["optim.layerwise_lr_decay"] = uniform(0.6, 1.0)
  c.objective.metric = "eval/f1_macro"
  c.objective.direction = "maximize"
  c.algorithm = next(iter(args), "tpe")
  c.pruner = "none"
  c.budget.trials = 4
  c.trial.steps = 92
  c.trial.eval_every = 92
  return c
