"""benchmarks/sentiment_reference.py: the torch loop's settings taken from a recipe, its
mean-pooled head against jaxtune's, and the compile times read from JAX's log."""

from __future__ import annotations

import logging
from collections import Counter

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxtune import averaging, hf, optim
from tests.benchmarks.sentiment_disputed_test import _load

script = _load("sentiment_reference")


def test_match_recipe_takes_the_recipes_hyperparameters():
  args = script.parse_args(["--recipe=configs/sentiment_mpnet.py", "--match-recipe"])
  config = script.load_recipe(args.recipe)
  hp = script.torch_settings(args, config)
  o, t = config.optim, config.train
  assert (hp["epochs"], hp["lr"], hp["warmup_steps"], hp["batch"], hp["max_length"]) == (
    t.epochs, o.learning_rate, o.warmup_steps, t.batch_size, config.data.seq_len)
  assert (hp["weight_decay"], hp["clip"]) == (o.weight_decay, o.grad_clip_norm)
  assert "embeddings." in hp["no_decay"]  # as jaxtune's optim.DEFAULT_EXCLUDE
  assert (hp["swa_start"], hp["swa_every"]) == (o.swa_start, o.swa_every)
  # Without the flag: issue 4's hand-written reference, whatever the recipe says.
  plain = script.torch_settings(script.parse_args(["--recipe=configs/sentiment_mpnet.py"]), config)
  assert (plain["epochs"], plain["lr"], plain["warmup_fraction"]) == (1.0, 5e-5, 0.1)


def test_match_recipe_takes_the_layerwise_decay(tmp_path):
  args = script.parse_args(["--recipe=configs/sentiment_minilm.py", "--match-recipe"])
  assert script.torch_settings(args, script.load_recipe(args.recipe))["layerwise_lr_decay"] == 0.8
  # The torch loop's layer depths are jaxtune's (optim's rules), parameter for parameter count.
  cfg = transformers.MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                 num_attention_heads=4, intermediate_size=64,
                                 max_position_embeddings=40)
  transformers.MPNetModel(cfg).save_pretrained(tmp_path)
  ours = hf.load(tmp_path, task="seq_cls", num_labels=2, pooling="mean")
  params = nnx.state(ours, nnx.Param)
  rules = optim._rules(optim.default_config(), params, 3)
  jax_depths = Counter(rules.depth(p) for p in jax.tree.leaves(optim.param_paths(params)))
  ref = script.torch_classifier(str(tmp_path), 2, "mean")
  torch_depths = Counter(script.layer_depth(n, 3) for n, _ in ref.named_parameters())
  assert jax_depths == torch_depths and set(jax_depths) == {0, 1, 2, 3}


def test_match_recipe_refuses_ema_the_torch_loop_does_not_keep():
  args = script.parse_args(["--recipe=configs/sentiment_mpnet.py", "--match-recipe"])
  config = script.load_recipe(args.recipe)
  config.optim.ema_decay = 0.99
  with pytest.raises(SystemExit, match=r"optim\.ema_decay=0\.99"):
    script.torch_settings(args, config)


def test_torch_swa_averages_the_steps_jaxtune_averages():
  # The torch loop's AveragedModel, sampled by swa_samples, against jaxtune's own SWA on the
  # same sequence of weights (update k leaves the weight at k**2).
  hp = {"swa_start": 2, "swa_every": 3}
  cfg = ml_collections.ConfigDict({"ema_decay": 0.0, "swa_start": 2, "swa_every": 3})
  params = {"w": jnp.zeros((1,), jnp.float32)}
  avg = averaging.init(params, cfg)
  net = torch.nn.Linear(1, 1, bias=False)
  ref = torch.optim.swa_utils.AveragedModel(net)
  for step in range(12):
    params = {"w": jnp.full((1,), float(step**2))}
    avg = averaging.update(avg, params, step, cfg)
    with torch.no_grad():
      net.weight.fill_(float(step**2))
    if script.swa_samples(step, hp):
      ref.update_parameters(net)
  assert int(ref.n_averaged) == int(avg.swa_count) == 4  # steps 2, 5, 8, 11
  mean = (4 + 25 + 64 + 121) / 4
  assert ref.module.weight.item() == pytest.approx(float(avg.swa["w"][0])) == mean
  assert not script.swa_samples(5, {"swa_start": -1, "swa_every": 1})


def test_mean_pooled_torch_head_equals_jaxtunes(tmp_path):
  cfg = transformers.MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64,
                                 max_position_embeddings=40)
  transformers.MPNetModel(cfg).save_pretrained(tmp_path)
  ours = hf.load(tmp_path, task="seq_cls", num_labels=2, pooling="mean")
  ref = script.torch_classifier(str(tmp_path), 2, "mean").eval()
  with torch.no_grad():  # the same (freshly initialised) classifier on both sides
    ref.classifier.weight.copy_(torch.tensor(np.asarray(ours.classifier.kernel[...]).T))
    ref.classifier.bias.copy_(torch.tensor(np.asarray(ours.classifier.bias[...]) + 0.3))
  ours.classifier.bias.set_value(ours.classifier.bias[...] + 0.3)
  ids = np.full((3, 12), 1, np.int64)  # pad id 1
  mask = np.zeros_like(ids)
  for b, n in enumerate((12, 5, 1)):
    ids[b, :n] = np.random.default_rng(b).integers(3, 64, n)
    mask[b, :n] = 1
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
  with torch.no_grad():
    want = ref(torch.tensor(ids), torch.tensor(mask)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_compile_times_are_read_from_jaxs_log(caplog):
  def counted_step(x):
    return x * 2 + 1

  x = jnp.arange(7.0)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING, logger="jax"):
      jax.jit(counted_step)(x)
  finally:
    jax.config.update("jax_log_compiles", False)
  found = [m.groups() for m in map(script.COMPILE_RE.search, caplog.messages) if m]
  assert [name for name, _ in found] == ["counted_step"] and float(found[0][1]) > 0
