"""GRPO's on-policy batches: each step's prompts sampled G times from the current weights,
scored, and laid out as one fixed-shape batch for the train step (`Objective.batches`).

Step s: the prompts are `pipeline.Batcher.indices(s)` of the prompt split (train.batch_size
prompts, the epoch's order seeded by the run's seed); each is repeated G times (TRL's
repeat_interleave layout: a prompt's G rows are consecutive) and completed by
`jaxtune.generate.Generator` from the step's current parameters (LoRA applied, on the run's
mesh) with a sampling key derived from (seed, s). So a run killed and resumed at step s draws
exactly the samples an uninterrupted run draws there. The rewards (`grpo.reward`) of the decoded
completions give group-normalised advantages (`grpo_loss.group_advantages`); with grpo.beta > 0
the reference log-probabilities come from the base (`reference.adapters_off`; full fine-tuning:
a frozen copy of the initial parameters).

The batch, [B = prompts x G] rows of width L + N (L the prompt split's width, left padded; N =
grpo.max_new_tokens, right padded): input_ids, attention_mask, completion_mask [B, N],
advantages, rewards, reward_std [B] (the batch's spread, repeated per row so micro-batches
average it exactly) and ref_logps [B, N].

Validation (`evaluate`): one completion per prompt (greedy at grpo.eval_temperature=0), scored
with the same reward: eval/reward, eval/reward_std, eval/completion_length, eval/loss = -reward.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune import generate, rewards, sharding
from jaxtune.data import pipeline
from jaxtune.data.prompts import prompt_ids
from jaxtune.errors import ConfigError
from jaxtune.models import layers
from jaxtune.objectives.base import merge
from jaxtune.objectives.grpo_loss import completion_logps, group_advantages
from jaxtune.objectives.reference import adapters_off


def _ref_logps(graphdef, params, frozen, batch):
  model = merge(graphdef, params, frozen)
  return completion_logps(adapters_off(model) if frozen is not None else model, batch)


class Rollouts:
  """`Objective.batches` of GRPO (see the module docstring)."""

  def __init__(self, config, batcher: pipeline.Batcher, *, mesh, built, splits):
    if jax.process_count() > 1:
      raise ConfigError("model.task='grpo' runs on one process for now (rewards are scored on "
                        "the host that samples); use one host's devices")
    self.g, self.seed, self.batcher, self.splits = config.grpo, config.seed, batcher, splits
    self.eval_batch_size = config.train.eval_batch_size
    self.log_every = config.train.log_every
    self.mesh, self.built = mesh, built
    self.tokenizer = splits.tokenizer
    self.reward_fn = rewards.load(self.g.reward)
    self.width = splits["train"].arrays["input_ids"].shape[1]  # L: every split has one width
    self.pad = generate.pad_id(self.tokenizer)
    self.stops = generate.stop_ids(self.tokenizer, built.model_config, [])
    self.sampling = generate.Sampling(self.g.temperature, self.g.top_k, self.g.top_p)
    self._gen: generate.Generator | None = None
    self._writer = None
    rows = batcher.global_batch * self.g.group_size
    template = self._layout([[self.pad]] * rows, [[]] * rows, np.zeros(rows, np.float32),
                            np.zeros(rows, np.float32), 0.0)
    if self.g.beta:
      template["ref_logps"] = np.zeros((rows, self.g.max_new_tokens), np.float32)
    self.shardings = pipeline.batch_shardings(mesh, template)
    self._ref = None
    if self.g.beta:
      # LoRA: the base is the current model with adapters off (no copy). Full fine-tuning: the
      # initial weights, copied now because the driver donates the train state's buffers.
      self._ref_params = (None if built.frozen is not None
                          else jax.tree.map(jnp.copy, built.state["params"]))
      out = self.shardings["ref_logps"]
      self._ref = jax.jit(functools.partial(_ref_logps, built.eval_graphdef), out_shardings=out)

  # ------------------------------------------------------------------------------ sampling
  def _model_state(self, params):
    model = merge(self.built.eval_graphdef, params, self.built.frozen)
    layers.unstack_layers(model)  # the KV cache walks the layers one by one
    if self._gen is None:
      self._gen = generate.Generator(model, pad_id=self.pad)
    return nnx.split(model)[1]

  def _complete(self, params, prompts: list[list[int]], sampling, seed: int, batch_size: int = 0):
    state = self._model_state(params)
    with sharding.use_mesh(self.mesh):
      res = self._gen(prompts, max_new_tokens=self.g.max_new_tokens, sampling=sampling,
                      stop_ids=self.stops, seed=seed, batch_size=batch_size, state=state)
    return res.tokens

  def _score(self, prompts: list, completions: list[list[int]]) -> np.ndarray:
    """Rewards of the decoded completions (`jaxtune.rewards` checks one finite float each)."""
    texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    return np.asarray(self.reward_fn(list(prompts), texts), np.float32)

  def step_seed(self, s: int) -> int:
    """The sampling seed of step `s`: a function of (run seed, step) only, so a resumed run
    samples what the uninterrupted one did."""
    return int(np.random.default_rng([self.seed, s, 0x6790]).integers(2**31 - 1))

  def _layout(self, prompts, completions, advantages, rewards, reward_std) -> dict[str, np.ndarray]:
    B, L, N = len(prompts), self.width, self.g.max_new_tokens
    ids = np.full((B, L + N), self.pad, np.int32)
    mask = np.zeros((B, L + N), np.int32)
    cmask = np.zeros((B, N), np.int32)
    for r, (p, c) in enumerate(zip(prompts, completions, strict=True)):
      ids[r, L - len(p):L], mask[r, L - len(p):L] = p, 1  # the prompt left padded to L
      ids[r, L:L + len(c)], mask[r, L:L + len(c)], cmask[r, :len(c)] = c, 1, 1
    return {"input_ids": ids, "attention_mask": mask, "completion_mask": cmask,
            "advantages": np.asarray(advantages, np.float32), "rewards": np.asarray(rewards, np.float32),
            "reward_std": np.full(B, reward_std, np.float32)}

  # ---------------------------------------------------------------------- the driver's side
  def stream(self, start: int, stop: int, writer=None) -> Rollouts:
    self._writer = writer
    return self

  def __enter__(self) -> Rollouts:
    return self

  def __exit__(self, *exc) -> None:
    self._writer = None

  def get(self, s: int, state: dict) -> dict:
    """Step `s`'s batch, sampled from `state`'s parameters (the policy before the step)."""
    G = self.g.group_size
    rows = self.batcher.indices(s)
    ds = self.splits["train"]
    prompts = [p for p in prompt_ids(ds, rows) for _ in range(G)]
    texts = [self.splits.examples["train"][int(i)]["prompt"]
             for i in ds.arrays["example_id"][rows] for _ in range(G)]
    params = state["params"]
    completions = self._complete(params, prompts, self.sampling, self.step_seed(s))
    rewards = self._score(texts, completions)
    adv, stats = group_advantages(jnp.asarray(rewards), G, scale=self.g.scale_rewards)
    host = self._layout(prompts, completions, np.asarray(adv), rewards, float(stats["reward/std"]))
    batch = pipeline.to_device(host, {k: v for k, v in self.shardings.items() if k in host})
    if self._ref is not None:
      ref_params = params if self._ref_params is None else self._ref_params
      batch["ref_logps"] = self._ref(ref_params, self.built.frozen, batch)
    if self._writer is not None and self.g.log_samples and (s + 1) % self.log_every == 0:
      self._write_samples(s + 1, texts, completions, rewards)
    return batch

  def _write_samples(self, s: int, prompts, completions, rewards) -> None:
    lines = []
    for i in range(min(self.g.log_samples, len(completions))):
      text = self.tokenizer.decode(completions[i], skip_special_tokens=True)
      lines.append(f"{i + 1}. `{prompts[i]!r}` → `{text!r}` (reward {rewards[i]:.4g})")
    self._writer.write_text(s, "samples/train", "\n\n".join(lines))

  def evaluate(self, params, ds: pipeline.Dataset) -> tuple[dict, dict]:
    """(metrics, {}) of one completion per prompt of `ds` (a split of this run)."""
    name = next((n for n, d in self.splits.splits.items() if d is ds), None)
    if name is None:
      raise ValueError("grpo evaluates the run's own prompt splits only")
    rows = np.arange(len(ds))
    texts = [self.splits.examples[name][int(i)]["prompt"] for i in ds.arrays["example_id"]]
    t = self.g.eval_temperature
    sampling = generate.Sampling(t, self.g.top_k, self.g.top_p) if t else generate.Sampling()
    completions = self._complete(params, prompt_ids(ds, rows), sampling, self.seed,
                                 batch_size=min(self.eval_batch_size, len(ds)))
    rewards = self._score(texts, completions)
    mean = float(np.mean(rewards))
    std = float(np.std(rewards, ddof=1)) if len(rewards) > 1 else 0.0
    length = float(np.mean([len(c) for c in completions]))
    return {"loss": -mean, "reward": mean, "reward_std": std if math.isfinite(std) else 0.0,
            "completion_length": length}, {}
