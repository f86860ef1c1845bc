"""jaxtune/recipes.py: recipe files loaded by path, with and without a variant."""

from pathlib import Path

import pytest

from jaxtune import recipes

REPO = Path(__file__).resolve().parents[1]


def test_a_recipe_loads_with_its_variant():
  quick = recipes.load(f"{REPO}/configs/sentiment_minilm.py:quick")
  full = recipes.load(REPO / "configs" / "sentiment_minilm.py")
  assert quick.data.max_rows and not full.data.max_rows
  # An explicit arg wins over the spec's.
  assert not recipes.load(f"{REPO}/configs/sentiment_minilm.py:quick", "").data.max_rows


def test_a_recipe_builds_on_the_one_beside_it():
  mpnet = recipes.load(REPO / "configs" / "sentiment_mpnet.py", "quick")
  minilm = recipes.beside(str(REPO / "configs" / "sentiment_mpnet.py"), "sentiment_minilm", "quick")
  assert mpnet.data.max_rows == minilm.data.max_rows and mpnet.model.source != minilm.model.source


def test_a_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.py: no such python file"):
    recipes.load(f"{tmp_path}/nope.py:quick")
