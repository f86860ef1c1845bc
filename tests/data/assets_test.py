"""Missing assets name the path and the command that fetches them."""

from __future__ import annotations

import pytest

from jaxtune import errors
from jaxtune.data import assets


def test_a_missing_asset_names_the_fetch_command(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXTUNE_CACHE", str(tmp_path))
  for fn in (assets.rotten_tomatoes_txt, assets.wordnet_dir):
    with pytest.raises(FileNotFoundError, match="python -m jaxtune.data.assets fetch") as e:
      fn()
    assert isinstance(e.value, errors.DataError)  # the CLI prints it as one line
    assert str(tmp_path) in str(e.value)
