"""Search on configs/dpo_smollm2.py: the KL weight (preference.beta) and the learning rate.

Objective: validation reward accuracy (the share of held-out pairs whose chosen answer the
policy prefers by more than the reference does). The ranges hold the recipe's own values (beta
0.1, learning rate 2e-4), which run first (trial 0, `baseline`). The accuracy does not see
diversity: a rate that overshoots (1e-3 did, BENCHMARKS.md) scores as well as one that does
not, so measure the best trials with benchmarks/positive_reviews.py before taking one.
Budget per trial: 30 steps with an evaluation every 15 (pruning by the median).

Variants: an algorithm ('tpe' default, 'random', 'grid', 'gp') and 'quick' (3 trials of 4
steps, with configs/dpo_smollm2.py:quick, a smoke test):

  jaxtune tune --config=configs/dpo_smollm2.py:quick --search=configs/search/dpo_smollm2.py:quick \
      --workdir=/tmp/dpo_search
"""

from jaxtune.config import known_variants
from jaxtune.tune import space
from jaxtune.tune.space import loguniform


def get_config(arg=None):
  args = known_variants("configs/search/dpo_smollm2.py", arg, (*space.ALGORITHMS, "quick"),
                        one_of=space.ALGORITHMS)
  c = space.default()
  c.space["preference.beta"] = loguniform(0.05, 0.5)
  c.space["optim.learning_rate"] = loguniform(5e-5, 1e-3)
  c.objective.metric = "eval/rewards/accuracy"
  c.objective.direction = "maximize"
  c.algorithm = next(iter(args & set(space.ALGORITHMS)), "tpe")
  quick = "quick" in args
  c.pruner = "median"
  c.budget.trials = 3 if quick else 6
  c.trial.steps = 4 if quick else 30
  c.trial.eval_every = 2 if quick else 15
  return c
