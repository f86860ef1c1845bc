"""Search on configs/sentiment_minilm.py: learning rate, weight decay and warmup.

Objective: validation accuracy. Variants: the algorithm ('tpe' default, 'random', 'grid', 'gp',
'pbt'); PBT searches only what the population can trace (learning rate, weight decay).
Budget per trial: 150 steps of batch 32 with an evaluation every 50 (pruning by the median).
"""

from jaxtune.tune import space
from jaxtune.tune.space import intrange, loguniform, uniform


def get_config(arg=None):
  c = space.default()
  c.space["optim.learning_rate"] = loguniform(1e-5, 3e-4)
  c.space["optim.weight_decay"] = uniform(0.0, 0.1)
  c.objective.metric = "eval/accuracy"
  c.objective.direction = "maximize"
  c.algorithm = arg or "tpe"
  if c.algorithm != "pbt":
    c.space["optim.warmup_steps"] = intrange(0, 40)
  c.pruner = "median"
  c.budget.trials = 8
  c.trial.steps = 150
  c.trial.eval_every = 50
  c.pbt.population = 4
  c.pbt.interval = 50
  c.pbt.generations = 3
  return c
