"""The train step's non-finite guard: a step whose loss, gradient or updated state is not finite
leaves the whole state as it was and is counted."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtune import step
from jaxtune.models import decoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import tiny  # noqa: E402

VOCAB = 37


def _model_and_batch(num_layers=1):
  cfg = decoder.DecoderConfig(model_type="llama", vocab_size=VOCAB, hidden_size=16,
                              intermediate_size=32, num_layers=num_layers, num_heads=2,
                              num_kv_heads=1, head_dim=8)
  graphdef, params = nnx.split(decoder.build(cfg, task="causal_lm", rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, VOCAB, (4, 12)).astype(np.int32)
  batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}
  return graphdef, nnx.to_pure_dict(params), batch


def _run(tx, steps=1):
  graphdef, params, batch = _model_and_batch()
  optim_cfg = tiny.get_config().optim
  cfg = step.StepConfig(task="causal_lm", micro_batches=1, skip_nonfinite=True, optim_cfg=optim_cfg)
  state = step.init_state(params, tx, 0, optim_cfg)
  before = jax.tree.map(np.asarray, state)
  fn = jax.jit(lambda s, b: step.train_step(graphdef, tx, cfg, s, b))
  for _ in range(steps):
    state, m = fn(state, batch)
  return before, jax.tree.map(np.asarray, state), jax.device_get(m)


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _overflowing_state() -> optax.GradientTransformation:
  """Finite updates (plain SGD) but an optimizer state that overflows to inf at once."""

  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(grads, acc, params=None):
    acc = jax.tree.map(lambda a, g: a + g * 1e38 * 1e38, acc, grads)
    return jax.tree.map(lambda g: -1e-3 * g, grads), acc

  return optax.GradientTransformation(init, update)


def test_finite_step_applies_the_update():
  before, after, m = _run(optax.sgd(1e-2))
  assert int(after["skipped"]) == 0 and int(after["first_bad_step"]) == -1
  assert not np.array_equal(before["params"]["embed_tokens"]["embedding"],
                            after["params"]["embed_tokens"]["embedding"])
  assert np.isfinite(m["train/loss"])


def test_update_overflowing_the_params_is_dropped():
  # Finite loss and gradients; only the updated parameters overflow (a huge learning rate).
  huge = optax.chain(optax.scale(1e30), optax.scale(-1e30))  # gradient * 1e60 overflows float32
  before, after, m = _run(huge, steps=2)
  assert np.isfinite(m["train/loss"]) and np.isfinite(m["train/grad_norm"])
  _same(before["params"], after["params"])
  _same(before["opt_state"], after["opt_state"])
  assert int(after["skipped"]) == 2 and int(after["first_bad_step"]) == 0
  assert int(after["step"]) == 2


def test_optimizer_state_overflow_is_dropped():
  before, after, _ = _run(_overflowing_state())
  _same(before["params"], after["params"])
  _same(before["opt_state"], after["opt_state"])
  assert int(after["skipped"]) == 1 and int(after["first_bad_step"]) == 0


def test_all_finite():
  assert bool(step.all_finite({"a": jnp.ones(3), "n": jnp.arange(3), "none": None}))
  assert not bool(step.all_finite({"a": jnp.array([1.0, jnp.inf])}))
  assert not bool(step.all_finite([jnp.zeros(2, jnp.bfloat16), jnp.array(jnp.nan, jnp.bfloat16)]))
  assert bool(step.all_finite({}))


def _compiled_lines(num_layers: int) -> int:
  graphdef, params, batch = _model_and_batch(num_layers)
  optim_cfg = tiny.get_config().optim
  tx = optax.adamw(1e-3)
  cfg = step.StepConfig(task="causal_lm", micro_batches=1, skip_nonfinite=True, optim_cfg=optim_cfg)
  state = jax.eval_shape(lambda p: step.init_state(p, tx, 0, optim_cfg), params)
  fn = jax.jit(lambda s, b: step.train_step(graphdef, tx, cfg, s, b))
  return fn.lower(state, batch).compile().as_text().count("\n")


def test_compiled_step_grows_linearly_with_depth():
  # The guard's check of every state leaf must be combined once: a per-leaf select let XLA copy
  # the whole combination into each leaf's fusion, a program quadratic in the number of leaves
  # (an 8B LoRA step did not compile in 15 minutes). Linear: 4 more layers add twice what 2 do.
  two, four, eight = (_compiled_lines(n) for n in (2, 4, 8))
  assert (eight - four) / (four - two) < 2.5, (two, four, eight)
