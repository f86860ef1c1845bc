"""The hashed dropout mask: right keep rate, deterministic per key, independent across keys."""

import jax
import numpy as np
import pytest

from jaxtune.models import layers


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.25])
def test_keep_rate(keep):
  m = np.asarray(layers.keep_mask(jax.random.key(0), keep, (64, 128, 32)))
  n = m.size
  # 5 standard deviations of a binomial proportion.
  assert abs(m.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)


def test_deterministic_and_key_dependent():
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a = np.asarray(layers.keep_mask(k1, 0.5, (4096,)))
  np.testing.assert_array_equal(a, np.asarray(layers.keep_mask(k1, 0.5, (4096,))))
  b = np.asarray(layers.keep_mask(k2, 0.5, (4096,)))
  # Two independent fair masks agree on about half the elements.
  assert abs((a == b).mean() - 0.5) < 0.05


def test_no_structure_between_neighbours():
  m = np.asarray(layers.keep_mask(jax.random.key(3), 0.5, (1 << 16,))).astype(np.float64)
  # Lag-1 and row-stride correlations vanish for a well-mixed hash.
  for lag in (1, 2, 256):
    r = np.corrcoef(m[:-lag], m[lag:])[0, 1]
    assert abs(r) < 0.03, (lag, r)


def test_dropout_scales_kept_values():
  d = layers.Dropout(0.25)
  d.deterministic = False
  x = np.ones((1000,), np.float32)
  y = np.asarray(d(x, jax.random.key(0)))
  kept = y[y != 0]
  np.testing.assert_allclose(kept, 1 / 0.75, rtol=1e-6)
  assert 0.2 < 1 - kept.size / y.size < 0.3
  assert d.__class__(0.25)(x, None) is x  # deterministic by default: identity
