"""A population in one program: P copies of one model that differ only in hyperparameters,
trained together by one jitted `jax.vmap` of the pure train step.

The optimizer already carries its numeric knobs as arrays in its state
(`optax.inject_hyperparams`, see `jaxtune.optim.build_optimizer`), so per-member values are a
[P] array in the stacked state: the step is traced once for the whole population. The learning
rate is the state's `peak_lr`, scaled by the recipe's schedule shape (warmup, decay).

Every member sees the same batches in the same order (the data is fed once and broadcast, and
a difference between members is then due to their hyperparameters alone); each member has its
own dropout key. Members start from the same weights (pretrained, or the recipe's seed for a
fresh head).

`vmapped=False` runs the same members one after another with the plain (unbatched) step: the
sequential reference of benchmarks/population.py, and PBT's fallback when the population does
not fit in device memory.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxtune import data, evaluate, metrics, optim, sharding, step, train
from jaxtune.data import pipeline

# Search keys a population can vary, and the injected optimizer hyperparameter each one sets.
TRACEABLE = {
  "optim.learning_rate": "peak_lr",
  "optim.weight_decay": "weight_decay",
  "optim.layerwise_lr_decay": "layerwise_lr_decay",
  "optim.grad_clip_norm": "grad_clip_norm",
  "optim.b1": "b1",
  "optim.b2": "b2",
  "optim.eps": "eps",
  "optim.momentum": "momentum",
}


def check_traceable(keys) -> None:
  bad = [k for k in keys if k not in TRACEABLE]
  if bad:
    raise ValueError(f"search.space keys {bad} cannot vary inside one population (only the "
                     f"optimizer's numeric hyperparameters can: {sorted(TRACEABLE)})")


def state_bytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def fits(member_bytes: int, population: int, device=None) -> bool:
  """Whether P member states (params, moments) plus room for activations fit on the devices.

  Devices that report no memory limit (CPU) count as fitting.
  """
  devices = jax.devices() if device is None else [device]
  stats = devices[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  if not limit:
    return True
  # Half the memory for the states; the rest for activations, gradients and the data.
  return population * member_bytes * 2 <= 0.5 * limit * len(devices)


class Population:
  """P members of `config`'s model; `hparams[i]` maps searched keys to member i's values."""

  def __init__(self, config, hparams: list[dict], total_steps: int, workdir: str | Path,
               vmapped: bool | None = True):
    """`vmapped=None`: one vmapped program when the population fits in device memory."""
    check_traceable({k for h in hparams for k in h})
    self.config, self.size = config, len(hparams)
    self.mesh = sharding.make_mesh(**config.mesh)
    self.splits = data.build(config, workdir)
    self.batcher = pipeline.Batcher(self.splits["train"], config.train.batch_size, config.seed)
    num_labels = config.model.num_labels or self.splits.num_labels
    built = train.build_state(config, self.mesh, num_labels, total_steps, self.splits.label_names)
    self.member_bytes = state_bytes(built.state)
    self.vmapped = fits(self.member_bytes, self.size) if vmapped is None else vmapped
    self.frozen = built.frozen
    cfg = step.StepConfig(task=config.model.task, micro_batches=config.train.micro_batches,
                          skip_nonfinite=config.train.on_nonfinite == "skip",
                          optim_cfg=config.optim, class_weights=self.splits.class_weights)
    one = functools.partial(step.train_step, built.train_graphdef, built.tx, cfg)
    self.batch_sh = pipeline.batch_shardings(self.mesh, self.batcher.host_batch(0))
    if self.vmapped:
      self.step_fn = jax.jit(jax.vmap(one, in_axes=(0, None, None)), donate_argnums=(0,))
      keys = jnp.arange(self.size)
      with sharding.use_mesh(self.mesh):
        self.states = jax.jit(jax.vmap(self._member_init, in_axes=(None, 0)))(built.state, keys)
    else:
      self.step_fn = jax.jit(one, donate_argnums=(0,))
      with sharding.use_mesh(self.mesh):
        init = jax.jit(self._member_init)
        self.states = [init(built.state, jnp.asarray(i)) for i in range(self.size)]
    self.eval_fn = train.make_eval_fn(built.eval_graphdef, config, self.mesh)
    self.hparams = [dict(h) for h in hparams]
    for i, h in enumerate(hparams):
      self.set_hparams(i, h)

  @staticmethod
  def _member_init(state, i):
    # Identical weights; a member's own dropout stream (and a private copy of every buffer).
    out = jax.tree.map(jnp.copy, state)
    key = jax.random.wrap_key_data(state["rng"])
    out["rng"] = jax.random.key_data(jax.random.fold_in(key, i))
    return out

  # ---------------------------------------------------------------------------- hyperparameters
  def set_hparams(self, i: int, values: dict) -> None:
    self.hparams[i] = dict(values)
    hp = optim.hyperparams(self.states["opt_state"] if self.vmapped else self.states[i]["opt_state"])
    for key, value in values.items():
      name = TRACEABLE[key]
      if name not in hp:
        raise ValueError(f"search.space[{key!r}]: the recipe's optimizer has no {name!r} to set "
                         f"(e.g. optim.grad_clip_norm must be > 0 in the recipe to search it)")
      if self.vmapped:
        hp[name] = hp[name].at[i].set(jnp.float32(value))
      else:
        hp[name] = jnp.asarray(value, hp[name].dtype)

  # ----------------------------------------------------------------------------------- train
  def train(self, start: int, steps: int) -> list[float]:
    """Steps start..start+steps-1 for every member; each member's mean train loss."""
    losses = []
    with sharding.use_mesh(self.mesh):
      if self.vmapped:
        for s in range(start, start + steps):
          batch = pipeline.to_device(self.batcher.host_batch(s), self.batch_sh)
          self.states, m = self.step_fn(self.states, batch, self.frozen)
          losses.append(m["train/loss"])
        return [float(x) for x in np.mean(np.asarray(jax.device_get(losses)), axis=0)]
      out = []
      for i in range(self.size):
        member = []
        for s in range(start, start + steps):
          batch = pipeline.to_device(self.batcher.host_batch(s), self.batch_sh)
          self.states[i], m = self.step_fn(self.states[i], batch, self.frozen)
          member.append(m["train/loss"])
        out.append(float(np.mean(jax.device_get(member))))
      return out

  def member(self, i: int) -> dict:
    return jax.tree.map(lambda x: x[i], self.states) if self.vmapped else self.states[i]

  def evaluate(self, split: str = "validation") -> list[dict]:
    """Each member's validation scalars, keyed like the driver's (`eval/accuracy`, ...)."""
    out = []
    with sharding.use_mesh(self.mesh):
      for i in range(self.size):
        res, _ = evaluate.evaluate(
          self.eval_fn, train.eval_params(self.member(i)), self.frozen, self.splits[split],
          task=self.config.model.task, mesh=self.mesh,
          batch_size=self.config.train.eval_batch_size, label_names=self.splits.label_names)
        out.append({f"eval/{k}": v for k, v in metrics.scalars(res).items()})
    return out

  # ----------------------------------------------------------------------------------- PBT
  def copy_member(self, dst: int, src: int) -> None:
    """Exploit: member `dst` takes `src`'s weights, optimizer state and hyperparameters."""
    if self.vmapped:
      self.states = jax.tree.map(lambda x: x.at[dst].set(x[src]), self.states)
    else:
      self.states[dst] = jax.tree.map(jnp.copy, self.states[src])
    self.hparams[dst] = dict(self.hparams[src])

  def save(self, path: str | Path) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(serialization.to_bytes(jax.device_get(self.states)))
    tmp.replace(path)

  def load(self, path: str | Path) -> None:
    restored = serialization.from_bytes(jax.device_get(self.states), Path(path).read_bytes())
    self.states = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), restored,
                               self.states)

  @property
  def total_bytes(self) -> int:
    return self.member_bytes * self.size

