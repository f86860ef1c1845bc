import collections

import numpy as np
import pytest

from jaxtune.data.quality import balance


def test_oversample_and_undersample():
  labels = ["a"] * 9 + ["b"] * 3 + ["c"]
  over = balance.resample(labels, "oversample", np.random.default_rng(0))
  assert collections.Counter(labels[i] for i in over) == {"a": 9, "b": 9, "c": 9}
  assert set(range(len(labels))) <= set(over.tolist()) and list(over) == sorted(over)
  under = balance.resample(labels, "undersample", np.random.default_rng(0))
  assert collections.Counter(labels[i] for i in under) == {"a": 1, "b": 1, "c": 1}
  assert len(set(under.tolist())) == 3
  with pytest.raises(ValueError, match="'smote'"):
    balance.resample(labels, "smote", np.random.default_rng(0))
