"""A tiny search on configs/tiny.py for tests: learning rate and weight decay, a few steps each.

Variants: 'grid', 'random', 'tpe', 'gp', 'pbt' (the algorithm; default tpe).
"""

from jaxtune.config import known_variants
from jaxtune.tune import space
from jaxtune.tune.space import loguniform, uniform


def get_config(arg=None):
  args = known_variants("configs/search/tiny.py", arg, space.ALGORITHMS, one_of=space.ALGORITHMS)
  c = space.default()
  # Both ranges hold the recipe's values (learning rate 3e-3, weight decay 0.01): its baseline
  # trial runs first. The grid (2 points per key) takes the ends of each range.
  c.space["optim.learning_rate"] = loguniform(1e-3, 3e-2)
  c.space["optim.weight_decay"] = uniform(0.0, 0.1)
  c.fixed["optim.warmup_steps"] = 2
  c.objective.metric = "eval/loss"
  c.objective.direction = "minimize"
  c.algorithm = next(iter(args), "tpe")
  c.pruner = "median"
  c.budget.trials = 3
  c.trial.steps = 6
  c.trial.eval_every = 3
  c.grid_points = 2
  c.pbt.population = 4
  c.pbt.interval = 3
  c.pbt.generations = 2
  c.pbt.quantile = 0.25
  return c
