"""Tests for jaxtune/optim.py: paths, freezing, decay masks, lr multipliers, schedules, clipping,
gradual unfreezing, penalties and config errors, on tiny pytrees, jitted and not."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune import optim

L = 3  # layers in the tiny trees


def tiny_params(seed=0):
  """A plain-dict transformer-shaped tree with HF-style names and random values."""
  keys = iter(jax.random.split(jax.random.key(seed), 64))

  def r(*shape):
    return jax.random.normal(next(keys), shape, jnp.float32)

  layer = lambda: {
    "input_layernorm": {"scale": r(4)},
    "self_attn": {"q_proj": {"kernel": r(4, 4)}},
    "mlp": {"down_proj": {"kernel": r(4, 4), "bias": r(4)}},
  }
  return {
    "embed_tokens": {"embedding": r(6, 4)},
    "layers": [layer() for _ in range(L)],
    "norm": {"scale": r(4)},
    "lm_head": {"kernel": r(4, 6)},
  }


def cfg(**kw):
  c = optim.default_config()
  # Exact arithmetic by default: constant lr, no clipping, no decay.
  c.schedule = "constant"
  c.grad_clip_norm = 0.0
  c.weight_decay = 0.0
  c.learning_rate = 0.1
  for k, v in kw.items():
    c[k] = v
  return c


def by_path(tree):
  return dict(zip(jax.tree.leaves(optim.param_paths(tree)), jax.tree.leaves(tree), strict=True))


def run_steps(tx, params, grads, n, jit=True):
  """n updates with fixed grads; returns (params, opt_state, list of per-step update trees)."""
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  history = []
  for _ in range(n):
    upd, state = update(grads, state, params)
    params = optax.apply_updates(params, upd)
    history.append(upd)
  return params, state, history


# ---------------------------------------------------------------------------------------------
# Paths.
# ---------------------------------------------------------------------------------------------


def test_param_paths_plain_dict():
  paths = set(jax.tree.leaves(optim.param_paths(tiny_params())))
  assert "layers/2/self_attn/q_proj/kernel" in paths
  assert "layers/0/mlp/down_proj/bias" in paths
  assert "embed_tokens/embedding" in paths
  assert "lm_head/kernel" in paths
  assert len(paths) == 3 + 4 * L


class Block(nnx.Module):
  def __init__(self, rngs):
    self.input_layernorm = nnx.RMSNorm(4, rngs=rngs)
    self.q_proj = nnx.Linear(4, 4, rngs=rngs)


class TinyLM(nnx.Module):
  def __init__(self, rngs):
    self.embed_tokens = nnx.Embed(6, 4, rngs=rngs)
    self.layers = nnx.List([Block(rngs) for _ in range(2)])
    self.lm_head = nnx.Linear(4, 6, use_bias=False, rngs=rngs)


def test_param_paths_and_optimizer_on_nnx_state():
  state = nnx.state(TinyLM(nnx.Rngs(0)), nnx.Param)
  paths = optim.param_paths(state)
  assert set(jax.tree.leaves(paths)) == {
    "embed_tokens/embedding",
    "layers/0/input_layernorm/scale",
    "layers/0/q_proj/kernel",
    "layers/0/q_proj/bias",
    "layers/1/input_layernorm/scale",
    "layers/1/q_proj/kernel",
    "layers/1/q_proj/bias",
    "lm_head/kernel",
  }
  # The whole recipe runs on the nnx.State as the train step will hand it over.
  c = cfg(freeze="embed_tokens", layerwise_lr_decay=0.5, unfreeze_every_steps=1, weight_decay=0.1)
  tx, _ = optim.build_optimizer(c, state, total_steps=10, num_layers=2)
  grads = jax.tree.map(jnp.ones_like, state)
  new, _, _ = run_steps(tx, state, grads, 4)
  old_p, new_p = by_path(state), by_path(new)
  assert np.array_equal(old_p["embed_tokens/embedding"], new_p["embed_tokens/embedding"])
  assert not np.array_equal(old_p["layers/0/q_proj/kernel"], new_p["layers/0/q_proj/kernel"])


# ---------------------------------------------------------------------------------------------
# Freezing and decay masks.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [True, False])
def test_frozen_params_bitwise_unchanged_and_stateless(jit):
  params = tiny_params()
  grads = tiny_params(seed=1)  # nonzero everywhere
  c = cfg(name="adamw", freeze=r"embed_tokens|^layers/0/", weight_decay=0.1, grad_clip_norm=1.0)
  tx, _ = optim.build_optimizer(c, params, total_steps=10, num_layers=L)
  new, state, _ = run_steps(tx, params, grads, 3, jit=jit)
  old_p, new_p = by_path(params), by_path(new)
  for path in old_p:
    same = np.array_equal(
      np.asarray(old_p[path]).view(np.uint32), np.asarray(new_p[path]).view(np.uint32)
    )
    frozen = path.startswith(("embed_tokens", "layers/0/"))
    assert same == frozen, path
  state_paths = jax.tree.leaves(optim.param_paths(state))
  moments = [p for p in state_paths if re.search(r"/(mu|nu)/", p)]
  assert any("/mu/layers/1/" in p for p in moments)  # trainable params do have moments
  assert not [p for p in moments if re.search(r"/(mu|nu)/(embed_tokens|layers/0/)", p)]


def test_decay_mask_excludes_bias_norm_embedding():
  params = tiny_params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  lr, wd = 0.1, 0.5
  c = cfg(name="adamw", learning_rate=lr, weight_decay=wd)
  tx, _ = optim.build_optimizer(c, params, total_steps=10, num_layers=L)
  new, _, _ = run_steps(tx, params, zeros, 1)
  old_p, new_p = by_path(params), by_path(new)
  decayed = {p for p in old_p if p.endswith("kernel")}
  assert len(decayed) == 1 + 2 * L
  for path in old_p:
    if path in decayed:
      np.testing.assert_allclose(new_p[path], old_p[path] * (1 - lr * wd), rtol=1e-6)
    else:  # biases, norm scales, embeddings
      np.testing.assert_array_equal(new_p[path], old_p[path])


# ---------------------------------------------------------------------------------------------
# Per-parameter learning rates.
# ---------------------------------------------------------------------------------------------


def test_lr_multipliers_and_layerwise_decay_exact_ratios():
  params = tiny_params()
  ones = jax.tree.map(jnp.ones_like, params)
  lr, d = 0.1, 0.5
  c = cfg(
    name="sgd",
    momentum=0.0,
    learning_rate=lr,
    layerwise_lr_decay=d,
    # First match wins: layers/1 q_proj gets 2.0, not 10.0.
    lr_multipliers=r"q_proj=2.0, lm_head=3, layers/1/=10",
  )
  tx, _ = optim.build_optimizer(c, params, total_steps=10, num_layers=L)
  _, _, (upd,) = run_steps(tx, params, ones, 1)
  expected = {
    "embed_tokens/embedding": d**L,
    "norm/scale": 1.0,
    "lm_head/kernel": 3.0,
  }
  for i in range(L):
    depth = d ** (L - 1 - i)
    expected[f"layers/{i}/self_attn/q_proj/kernel"] = 2.0 * depth
    group = 10.0 if i == 1 else 1.0
    expected[f"layers/{i}/mlp/down_proj/kernel"] = group * depth
    expected[f"layers/{i}/mlp/down_proj/bias"] = group * depth
    expected[f"layers/{i}/input_layernorm/scale"] = group * depth
  got = by_path(upd)
  assert set(got) == set(expected)
  for path, mult in expected.items():
    np.testing.assert_allclose(got[path], -lr * mult, rtol=1e-6, err_msg=path)


def stacked(tree):
  """`tiny_params` as a scanned model holds it: the layers one stack with a leading [L] axis."""
  return {**tree, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *tree["layers"])}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_stacked_layers_get_the_per_layer_rules_of_unrolled_ones(name):
  # Layer-wise decay, gradual unfreezing, weight decay and group multipliers on a scanned stack:
  # every update equals the unrolled tree's, layer by layer (row i of the stack is layer i).
  params, grads = tiny_params(), tiny_params(seed=1)
  c = cfg(name=name, weight_decay=0.1, layerwise_lr_decay=0.5, unfreeze_every_steps=2,
          unfreeze_start_layers=1, lr_multipliers="q_proj=2.0, lm_head=3")
  unrolled, _ = optim.build_optimizer(c, params, total_steps=20, num_layers=L)
  scanned, _ = optim.build_optimizer(c, stacked(params), total_steps=20, num_layers=L)
  _, _, want = run_steps(unrolled, params, grads, 7)
  _, _, got = run_steps(scanned, stacked(params), stacked(grads), 7)
  for step, (u, s) in enumerate(zip(want, got, strict=True)):
    for path, a, b in zip(jax.tree.leaves(optim.param_paths(s)), jax.tree.leaves(stacked(u)),
                          jax.tree.leaves(s), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=f"{path} at step {step}")
  # The rules did act: at step 2 (two layers open) layer 0 is still frozen, the top two move.
  q = got[2]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert not np.any(q[0]) and np.all(np.any(q[1:] != 0, axis=(1, 2)))


def test_a_scanned_model_gets_one_learning_rate_per_layer():
  # The real parameter paths of a stacked nnx model (`layers/self_attn/...`, no index).
  from jaxtune.models import layers, presets

  model = presets.init("tiny-llama")
  layers.stack_layers(model)
  params = nnx.state(model, nnx.Param)
  n = layers.num_layers(model.layers)
  tx, _ = optim.build_optimizer(cfg(name="sgd", layerwise_lr_decay=0.5), params, total_steps=4,
                                num_layers=n)
  _, _, (upd,) = run_steps(tx, params, jax.tree.map(jnp.ones_like, params), 1)
  got = by_path(upd)
  q = got["layers/self_attn/q_proj/kernel"]
  np.testing.assert_allclose(q[:, 0, 0], -0.1 * 0.5 ** np.arange(n - 1, -1, -1), rtol=1e-6)
  np.testing.assert_allclose(got["embed_tokens/embedding"], -0.1 * 0.5**n, rtol=1e-6)


def test_a_regex_naming_one_layer_of_a_stack_says_the_layers_are_scanned():
  with pytest.raises(optim.ConfigError, match=r"optim.freeze='layers/0/' matches no parameter "
                     r"\(e.g. 'layers/.*': model.scan_layers=True stacks the layers"):
    optim.build_optimizer(cfg(freeze="layers/0/"), stacked(tiny_params()), total_steps=10, num_layers=L)


def test_stacked_layers_must_have_one_row_per_layer():
  with pytest.raises(ValueError, match=r"stacked parameter 'layers/.*' has shape \(3, 4\), not \[num_layers=4"):
    optim.build_optimizer(cfg(), stacked(tiny_params()), total_steps=10, num_layers=4)


def test_hyperparams_live_in_state():
  params = tiny_params()
  ones = jax.tree.map(jnp.ones_like, params)
  c = cfg(name="sgd", learning_rate=0.1, schedule="linear", warmup_steps=2)
  tx, sched = optim.build_optimizer(c, params, total_steps=10, num_layers=L)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(4):
    upd, state = update(ones, state, params)
    lr = optim.current_learning_rate(state)
    assert float(lr) == pytest.approx(float(sched(step)))
    np.testing.assert_allclose(upd["lm_head"]["kernel"], -lr, rtol=1e-6)
  hp = optim.hyperparams(state)
  assert hp["lr_scale"].dtype == jnp.float32
  hp["lr_scale"] = jnp.float32(2.0)  # what a search would do, traced or not
  upd, state = update(ones, state, params)
  np.testing.assert_allclose(upd["lm_head"]["kernel"], -2.0 * sched(4), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Optimizers, schedules, clipping.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,lr", [("adamw", 0.05), ("sgd", 0.1), ("rmsprop", 0.05), ("adafactor", 0.05), ("lion", 0.05)]
)
def test_each_optimizer_reduces_a_quadratic(name, lr):
  params = {"layers": [{"w": {"kernel": jnp.zeros((4, 4))}}], "head": {"kernel": jnp.zeros(3)}}
  target = {
    "layers": [{"w": {"kernel": jnp.full((4, 4), 1.5)}}],
    "head": {"kernel": jnp.arange(3.0)},
  }
  loss = lambda p: sum(
    jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True)
  )
  # min_dim 2 so adafactor takes its factored path on the 4x4 kernel.
  c = cfg(name=name, learning_rate=lr, momentum=0.5, adafactor_min_dim_size_to_factor=2)
  tx, _ = optim.build_optimizer(c, params, total_steps=100, num_layers=1)

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  start = float(loss(params))
  for _ in range(40):
    params, state = step(params, state)
  assert float(loss(params)) < 0.2 * start


def schedule_cfg(kind, warmup=10):
  return cfg(
    schedule=kind, learning_rate=1.0, warmup_steps=warmup, min_lr_ratio=0.1, wsd_decay_fraction=0.2
  )


@pytest.mark.parametrize(
  "kind,points",
  [
    ("constant", {60: 1.0, 110: 1.0, 500: 1.0}),
    ("linear", {60: 0.55, 110: 0.1, 500: 0.1}),
    ("cosine", {35: 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 60: 0.55, 110: 0.1, 500: 0.1}),
    ("rsqrt", {40: 0.5, 90: 1 / 3}),
    # wsd: decay starts at 110 - 0.2 * 110 = 88.
    ("wsd", {50: 1.0, 88: 1.0, 99: 0.55, 110: 0.1, 500: 0.1}),
  ],
)
def test_schedules(kind, points):
  sched = optim.make_schedule(schedule_cfg(kind), total_steps=110)
  # Warmup from 0, linear, reaching the peak at warmup end.
  points = {0: 0.0, 5: 0.5, 10: 1.0, **points}
  for step, want in points.items():
    assert float(sched(step)) == pytest.approx(want, abs=1e-6), step
  traced = jax.jit(sched)(jnp.array(list(points)))
  np.testing.assert_allclose(traced, list(points.values()), atol=1e-6)


def test_rsqrt_without_warmup():
  sched = optim.make_schedule(schedule_cfg("rsqrt", warmup=0), total_steps=100)
  assert [float(sched(s)) for s in (0, 1, 4, 100)] == pytest.approx([1.0, 1.0, 0.5, 0.1])


@pytest.mark.parametrize("grad_norm", [10.0, 0.5])
def test_clipping_caps_global_norm(grad_norm):
  params = tiny_params()
  raw = tiny_params(seed=1)
  grads = jax.tree.map(lambda g: g * grad_norm / optax.tree.norm(raw), raw)
  c = cfg(name="sgd", learning_rate=1.0, grad_clip_norm=1.0)
  tx, _ = optim.build_optimizer(c, params, total_steps=10, num_layers=L)
  _, _, (upd,) = run_steps(tx, params, grads, 1)
  norm = float(optax.tree.norm(upd))
  assert norm == pytest.approx(min(grad_norm, 1.0), rel=1e-5)


def test_gradual_unfreezing_top_down():
  params = tiny_params()
  grads = tiny_params(seed=1)
  # adamw with weight decay: a still-frozen layer would move through decay without the 2nd gate.
  c = cfg(name="adamw", weight_decay=0.1, unfreeze_every_steps=2, unfreeze_start_layers=0)
  tx, _ = optim.build_optimizer(c, params, total_steps=20, num_layers=L)
  _, state, history = run_steps(tx, params, grads, 10)

  def group(path):
    m = re.match(r"layers/(\d+)/", path)
    return f"layer{m.group(1)}" if m else ("embed" if path.startswith("embed") else "head")

  for step, upd in enumerate(history):
    n_open = step // 2
    want = {"head"} | {f"layer{i}" for i in range(L) if i >= L - n_open}
    if n_open > L:
      want.add("embed")
    moved = {group(p) for p, u in by_path(upd).items() if np.any(np.asarray(u) != 0)}
    assert moved == want, (step, moved)

  # Before it unfroze, a layer's Adam moments stayed zero: 3 steps in, only layer 2 has moments.
  _, state3, _ = run_steps(tx, params, grads, 3)
  mu = {p: v for p, v in by_path(state3).items() if "/mu/" in p}
  assert all(
    not np.any(v) for p, v in mu.items() if "/layers/0/" in p or "/layers/1/" in p or "/embed" in p
  )
  assert all(np.any(v) for p, v in mu.items() if "/layers/2/" in p and "kernel" in p)


# ---------------------------------------------------------------------------------------------
# Penalty.
# ---------------------------------------------------------------------------------------------


def test_penalty_exact():
  params = {
    "layers": [
      {"mlp": {"kernel": jnp.array([[1.0, -2.0], [3.0, -4.0]]), "bias": jnp.full(2, 100.0)}}
    ],
    "norm": {"scale": jnp.full(2, 50.0)},
    "embed_tokens": {"embedding": jnp.full((2, 2), 30.0)},
    "lm_head": {"kernel": jnp.ones((2, 2), jnp.bfloat16)},
  }
  c = cfg(l1=0.1, l2=0.01)
  # kernel: sum|w| = 10, sum w^2 = 30; lm_head: 4 and 4; bias/norm/embedding excluded.
  want = 0.1 * 14 + 0.01 * 34
  assert float(optim.penalty(params, c)) == pytest.approx(want, rel=1e-6)
  assert float(jax.jit(lambda p: optim.penalty(p, c))(params)) == pytest.approx(want, rel=1e-6)
  c.freeze = "lm_head"  # frozen params are not penalised
  assert float(optim.penalty(params, c)) == pytest.approx(0.1 * 10 + 0.01 * 30, rel=1e-6)
  c.penalty_exclude = ""
  c.freeze = ""
  assert float(optim.penalty(params, c)) == pytest.approx(
    0.1 * (14 + 200 + 100 + 120) + 0.01 * (34 + 20000 + 5000 + 3600), rel=1e-6
  )
  off = optim.penalty(params, cfg())
  assert off.shape == () and float(off) == 0.0


# ---------------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------------


def test_default_config_has_real_defaults():
  c = optim.default_config()
  for key in (
    "name learning_rate b1 b2 eps weight_decay decay_exclude momentum nesterov rmsprop_decay "
    "schedule warmup_steps min_lr_ratio wsd_decay_fraction grad_clip_norm l1 l2 penalty_exclude "
    "freeze lr_multipliers layerwise_lr_decay unfreeze_every_steps unfreeze_start_layers "
    "ema_decay swa_start swa_every"
  ).split():
    assert key in c, key
  assert all(v is not None for v in c.values())
  # The default exclusion regex: biases, norms/scales and embeddings, not kernels.
  ex = re.compile(c.decay_exclude)
  assert all(
    ex.search(p)
    for p in (
      "layers/0/mlp/down_proj/bias",
      "layers/0/input_layernorm/scale",
      "norm/scale",
      "embed_tokens/embedding",
    )
  )
  assert not any(
    ex.search(p)
    for p in ("layers/3/self_attn/q_proj/kernel", "lm_head/kernel", "classifier/kernel")
  )


@pytest.mark.parametrize(
  "key,value",
  [
    ("name", "adam"),
    ("schedule", "step"),
    ("lr_multipliers", "q_proj"),
    ("lr_multipliers", "q_proj=fast"),
    ("lr_multipliers", "nothing_like_this=2"),
    ("lr_multipliers", "q_proj(=2"),
    ("freeze", "layers/(0"),
    ("freeze", "."),
    ("freeze", "nothing_like_this"),
    ("decay_exclude", "[bias"),
    ("layerwise_lr_decay", 0.0),
  ],
)
def test_config_errors_name_the_key(key, value):
  c = cfg(**{key: value})
  with pytest.raises(ValueError) as e:
    optim.build_optimizer(c, tiny_params(), total_steps=10, num_layers=L)
  assert f"optim.{key}" in str(e.value)
  assert repr(value) in str(e.value) or str(value) in str(e.value)


def test_warmup_longer_than_training_is_an_error():
  with pytest.raises(ValueError, match="optim.warmup_steps=20"):
    optim.make_schedule(cfg(schedule="cosine", warmup_steps=20), total_steps=20)


def test_layer_index_beyond_num_layers_is_an_error():
  with pytest.raises(ValueError, match="num_layers"):
    optim.build_optimizer(cfg(), tiny_params(), total_steps=10, num_layers=L - 1)
