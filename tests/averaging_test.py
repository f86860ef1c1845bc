"""Tests for jaxtune/averaging.py: EMA and SWA against hand-computed values, jitted and not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import averaging, optim


def cfg(**kw):
  c = optim.default_config()
  for k, v in kw.items():
    c[k] = v
  return c


def params_at(step, dtype=jnp.float32):
  """Params that differ at every step, so averages differ from the last ones."""
  return {
    "layers": [{"kernel": jnp.full((2, 3), float(step), dtype)}],
    "head": {"bias": jnp.array([step, -2.0 * step, step**2], dtype)},
  }


def test_off_means_none():
  c = cfg()
  assert averaging.init(params_at(0), c) is None
  assert averaging.update(None, params_at(1), 1, c) is None
  p = params_at(3)
  assert averaging.params_for_eval(None, p) is p


@pytest.mark.parametrize("jit", [True, False])
def test_ema_matches_hand_computation(jit):
  d = 0.9
  c = cfg(ema_decay=d)
  if jit:
    update = jax.jit(lambda a, p, s: averaging.update(a, p, s, c))
  else:
    update = lambda a, p, s: averaging.update(a, p, s, c)
  avg = averaging.init(params_at(0), c)
  assert avg.swa is None
  for step in (1, 2, 3):
    avg = update(avg, params_at(step), step)
  # Seeded with the first params, then avg = d * avg + (1 - d) * p.
  want = 1.0
  want = d * want + (1 - d) * 2.0
  want = d * want + (1 - d) * 3.0
  np.testing.assert_allclose(avg.ema["layers"][0]["kernel"], want, rtol=1e-6)
  want_bias = d * (d * np.array([1.0, -2, 1]) + (1 - d) * np.array([2.0, -4, 4])) + (
    1 - d
  ) * np.array([3.0, -6, 9])
  np.testing.assert_allclose(avg.ema["head"]["bias"], want_bias, rtol=1e-6)
  evaluated = averaging.params_for_eval(avg, params_at(3))
  np.testing.assert_allclose(evaluated["layers"][0]["kernel"], want, rtol=1e-6)
  assert not np.allclose(evaluated["layers"][0]["kernel"], params_at(3)["layers"][0]["kernel"])


def test_ema_kept_in_float32_for_bf16_params():
  c = cfg(ema_decay=0.999)
  avg = averaging.init(params_at(0, jnp.bfloat16), c)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(avg.ema))
  # 1.0 + tiny steps: bf16 could not hold the average, float32 does.
  for step, value in enumerate((1.0, 1.01, 1.02)):
    p = jax.tree.map(lambda x, v=value: jnp.full_like(x, v), params_at(0, jnp.bfloat16))
    avg = averaging.update(avg, p, step, c)
  assert float(avg.ema["head"]["bias"][0]) != 1.0
  out = averaging.params_for_eval(avg, params_at(0, jnp.bfloat16))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))


@pytest.mark.parametrize("jit", [True, False])
def test_swa_is_mean_of_sampled_params(jit):
  c = cfg(swa_start=2, swa_every=3)
  fn = lambda a, p, s: averaging.update(a, p, s, c)
  update = jax.jit(fn) if jit else fn
  avg = averaging.init(params_at(0), c)
  assert avg.ema is None
  # Before any sample, eval uses the raw params.
  raw = params_at(0)
  np.testing.assert_array_equal(
    averaging.params_for_eval(avg, raw)["head"]["bias"], raw["head"]["bias"]
  )
  for step in range(11):  # samples at steps 2, 5, 8
    avg = update(avg, params_at(step), jnp.int32(step))
  assert int(avg.swa_count) == 3
  mean = jax.tree.map(lambda *xs: sum(xs) / 3, params_at(2), params_at(5), params_at(8))
  for got, want in zip(jax.tree.leaves(avg.swa), jax.tree.leaves(mean), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6)
  evaluated = averaging.params_for_eval(avg, params_at(10))
  np.testing.assert_allclose(evaluated["head"]["bias"], mean["head"]["bias"], rtol=1e-6)


def test_swa_preferred_over_ema_once_sampled():
  c = cfg(ema_decay=0.5, swa_start=2, swa_every=1)
  avg = averaging.init(params_at(0), c)
  avg = averaging.update(avg, params_at(1), 1, c)  # EMA only
  np.testing.assert_allclose(
    averaging.params_for_eval(avg, params_at(1))["layers"][0]["kernel"], 1.0
  )
  avg = averaging.update(avg, params_at(2), 2, c)  # EMA 1.5, SWA 2
  np.testing.assert_allclose(avg.ema["layers"][0]["kernel"], 1.5)
  np.testing.assert_allclose(
    averaging.params_for_eval(avg, params_at(2))["layers"][0]["kernel"], 2.0
  )


def test_works_on_nnx_state():
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  c = cfg(ema_decay=0.5, swa_start=0)
  avg = averaging.init(state, c)
  avg = jax.jit(lambda a, p: averaging.update(a, p, 0, c))(avg, state)
  doubled = jax.tree.map(lambda x: 2 * x, state)
  avg = averaging.update(avg, doubled, 1, c)
  out = averaging.params_for_eval(avg, state)
  assert jax.tree.structure(out) == jax.tree.structure(state)
  np.testing.assert_allclose(out["kernel"][...], 1.5 * state["kernel"][...], rtol=1e-6)  # SWA


@pytest.mark.parametrize("key,value", [("ema_decay", 1.0), ("swa_every", 0), ("swa_start", -5)])
def test_config_errors_name_the_key(key, value):
  c = cfg(**{key: value})
  if key == "swa_every":
    c.swa_start = 0
  with pytest.raises(ValueError, match=f"optim.{key}"):
    averaging.init(params_at(0), c)
