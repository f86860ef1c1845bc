"""Search spaces: validation naming the key at fault, config overrides, grids, PBT's explore."""

from pathlib import Path

import numpy as np
import pytest

from jaxtune import recipes
from jaxtune.tune import space


def test_apply_sets_dotted_keys_and_keeps_types(tiny_config):
  c = space.apply(tiny_config, {"optim.learning_rate": 1e-4, "train.steps": 7.0})
  assert c.optim.learning_rate == 1e-4
  assert c.train.steps == 7 and isinstance(c.train.steps, int)
  assert tiny_config.train.steps != 7  # the input is left alone


def test_check_names_the_bad_key(tiny_config, tiny_search):
  s = tiny_search()
  s.space["optim.learning_rte"] = space.uniform(0.1, 0.2)
  with pytest.raises(ValueError, match="learning_rte"):
    space.check(s, tiny_config)
  s = tiny_search()
  s.space["optim.weight_decay"] = ("uniform", 1.0, 0.5)
  with pytest.raises(ValueError, match=r"optim.weight_decay.*low < high"):
    space.check(s, tiny_config)
  s = tiny_search()
  s.objective.metric = "train/loss"
  with pytest.raises(ValueError, match="eval/"):
    space.check(s, tiny_config)


def test_grid_spans_each_range(tiny_search):
  s = tiny_search("grid")
  s.space["train.micro_batches"] = space.intrange(1, 2)
  g = space.grid(s)
  np.testing.assert_allclose(g["optim.learning_rate"], [1e-3, 3e-2])
  assert g["optim.weight_decay"] == [0.0, 0.1]
  assert g["train.micro_batches"] == [1, 2]
  assert space.grid_size(s) == 8


def test_perturb_stays_in_range_and_moves():
  s = space.default()
  s.space["optim.learning_rate"] = space.loguniform(1e-4, 1e-2)
  s.space["optim.name"] = space.choice("adamw", "lion", "sgd")
  rng = np.random.default_rng(0)
  start = {"optim.learning_rate": 1e-2, "optim.name": "lion"}
  seen = set()
  for _ in range(50):
    v = space.perturb(s, start, rng, (0.8, 1.25), resample_prob=0.0)
    assert 1e-4 <= v["optim.learning_rate"] <= 1e-2
    assert v["optim.name"] in ("adamw", "sgd")  # a neighbour, never the same option
    seen.add(round(v["optim.learning_rate"], 6))
  assert seen == {0.008, 0.01}  # x0.8, or x1.25 clipped to the top of the range


@pytest.mark.parametrize("recipe, search, variants", [
  ("tiny", "tiny", [(None, a) for a in ("random", "tpe", "gp")]),
  ("sentiment_minilm", "sentiment_minilm", [(None, None), ("quick", "quick"),
                                            ("quick", "quick,random")]),
])
def test_search_files_hold_their_recipes_values(recipe, search, variants, monkeypatch):
  """The shipped spaces contain their recipe's values, so the baseline trial runs."""
  import importlib

  from jaxtune.data import assets

  # Only the recipes' optimizer values matter here: no need for the MiniLM weights installed.
  monkeypatch.setattr(assets, "minilm_dir", lambda: "minilm")
  for recipe_arg, search_arg in variants:
    config = importlib.import_module(f"configs.{recipe}").get_config(recipe_arg)
    s = importlib.import_module(f"configs.search.{search}").get_config(search_arg)
    values, why = space.baseline(s, config)
    assert why == "", (recipe_arg, search_arg, why)
    assert values == {k: space.lookup(config, k) for k in s.space}


def test_baseline_outside_the_space_says_which_key_and_what_to_do(tiny_config, tiny_search):
  s = tiny_search()
  s.space["optim.learning_rate"] = space.loguniform(1e-2, 3e-2)  # the recipe has 3e-3
  s.space["optim.warmup_steps"] = space.intrange(0, 5)
  values, why = space.baseline(s, tiny_config)
  assert values is None
  assert "optim.learning_rate=0.003 is outside loguniform(0.01, 0.03)" in why
  assert "optim.warmup_steps=10 is outside intrange(0, 5)" in why
  assert "search.baseline=False" in why and "optim.weight_decay" not in why


REPO = Path(__file__).resolve().parents[2]
SEARCHES = sorted(p.stem for p in (REPO / "configs" / "search").glob("*.py"))


@pytest.mark.parametrize("name", SEARCHES)
def test_shipped_searches_fit_their_recipes(name):
  # Each configs/search/<name>.py searches configs/<name>.py: its keys exist there, and the
  # recipe's own values lie inside the ranges, so trial 0 is the recipe (the baseline).
  search = space.load(str(REPO / "configs" / "search" / f"{name}.py"))
  config = recipes.load(REPO / "configs" / f"{name}.py")
  space.check(search, config)
  values, why = space.baseline(search, config)
  assert values is not None, why
