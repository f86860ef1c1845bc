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

With several devices the members lie along the mesh's `population` axis (`mesh.population`,
see `sharding.population_mesh`): each group of members trains on its own slice of devices, each
member over the slice's (data, fsdp, tensor) as a single run would, in the same one program.

`vmapped=False` runs the same members one after another with the plain (unbatched) step: the
sequential reference of benchmarks/population.py, and PBT's fallback when the population does
not fit in device memory.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from jax.sharding import NamedSharding, PartitionSpec

from jaxtune import build, evaluate, finished_run, metrics, objectives, optim, sharding, step
from jaxtune.data import pipeline
from jaxtune.errors import ConfigError

log = logging.getLogger(__name__)

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
    m = config.mesh
    if vmapped is False and m.population not in (-1, 1):
      raise ConfigError(f"mesh.population={m.population} splits a vmapped population over "
                        "devices, but --population=off trains the members one after another; "
                        "remove it or use --population=on")
    # Members along the mesh's population axis; within a slice, each member as one run is.
    self.mesh = (sharding.make_mesh(**m) if vmapped is False else
                 sharding.population_mesh(self.size, m.population, m.data, m.fsdp, m.tensor))
    objective = objectives.get(config)
    if objective.on_policy:  # batches sampled from each member's weights (GRPO)
      raise ConfigError(f"config: model.task={config.model.task!r} samples each step's batch from "
                        "its own weights, which PBT's population step does not do: search it "
                        "with another search.algorithm (trials run as ordinary training runs)")
    self.splits = objective.splits(config, workdir)
    self.batcher = pipeline.Batcher(self.splits["train"], config.train.batch_size, config.seed)
    num_labels = config.model.num_labels or self.splits.num_labels
    built = build.build_state(config, self.mesh, num_labels, total_steps, self.splits.label_names)
    self.member_bytes = state_bytes(built.state)
    self.vmapped = fits(self.member_bytes, self.size) if vmapped is None else vmapped
    if not self.vmapped and vmapped is None:
      # Too big for one program: members one after another, each over every device as one run.
      self.mesh = sharding.make_mesh(**m)
      built = build.build_state(config, self.mesh, num_labels, total_steps, self.splits.label_names)
    self.frozen = built.frozen
    cfg = step.StepConfig(task=config.model.task, micro_batches=config.train.micro_batches,
                          skip_nonfinite=config.train.on_nonfinite == "skip",
                          optim_cfg=config.optim, class_weights=self.splits.class_weights)
    one = functools.partial(step.train_step, built.train_graphdef, built.tx, cfg)
    self.batch_sh = pipeline.batch_shardings(self.mesh, self.batcher.host_batch(0))
    if self.vmapped:
      # Every state leaf gains a leading member axis split over the population axis; the batch
      # and the frozen weights are shared (replicated over it). spmd_axis_name puts the
      # population axis into the sharding constraints inside the model too.
      self.state_sh = jax.tree.map(self._stacked, built.state_sh)
      by_member = NamedSharding(self.mesh, PartitionSpec(sharding.POPULATION))
      vmap = functools.partial(jax.vmap, spmd_axis_name=sharding.POPULATION)
      self.step_fn = jax.jit(vmap(one, in_axes=(0, None, None)), donate_argnums=(0,),
                             out_shardings=(self.state_sh, by_member))
      evaluate_one = functools.partial(_eval_member, built.eval_graphdef, config.model.task)
      self.eval_fn = jax.jit(vmap(evaluate_one, in_axes=(0, None, None)), out_shardings=by_member)
      with sharding.use_mesh(self.mesh):
        init = jax.jit(vmap(self._member_init, in_axes=(None, 0)), out_shardings=self.state_sh)
        self.states = init(built.state, jnp.arange(self.size))
    else:
      self.step_fn = jax.jit(one, donate_argnums=(0,))
      self.eval_fn = build.make_eval_fn(built.eval_graphdef, config, self.mesh)
      with sharding.use_mesh(self.mesh):
        init = jax.jit(self._member_init)
        self.states = [init(built.state, jnp.asarray(i)) for i in range(self.size)]
    self.hparams = [dict(h) for h in hparams]
    for i, h in enumerate(hparams):
      self.set_hparams(i, h)
    log.info("population: %d members %s on mesh %s", self.size,
             "vmapped" if self.vmapped else "one after another",
             " x ".join(f"{k}={v}" for k, v in self.mesh.shape.items()))

  def _stacked(self, member: jax.sharding.Sharding) -> NamedSharding:
    spec = member.spec if isinstance(member, NamedSharding) else PartitionSpec()
    return NamedSharding(self.mesh, PartitionSpec(sharding.POPULATION, *spec))

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
        hp[name] = jax.device_put(hp[name].at[i].set(jnp.float32(value)), hp[name].sharding)
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
    kw = {"task": self.config.model.task, "mesh": self.mesh,
          "batch_size": self.config.train.eval_batch_size}
    ds, names = self.splits[split], self.splits.label_names
    with sharding.use_mesh(self.mesh):
      if self.vmapped:  # one pass over the data for the whole population
        order, batches = evaluate.device_batches(ds, self.mesh, kw["batch_size"])
        sums = [evaluate.Sums() for _ in range(self.size)]
        weights = {k: self.states[k] for k in ("params", "avg")}
        for b, dev in batches:
          out = jax.device_get(self.eval_fn(weights, self.frozen, dev))
          for i, s in enumerate(sums):
            s.add(jax.tree.map(lambda x, i=i: x[i], out), b)
        results = [s.result(kw["task"], names, order)[0] for s in sums]
      else:
        results = [evaluate.evaluate(self.eval_fn, finished_run.eval_params(self.member(i)), self.frozen,
                                     ds, label_names=names, **kw)[0] for i in range(self.size)]
    return [{f"eval/{k}": v for k, v in metrics.scalars(res).items()} for res in results]

  # ----------------------------------------------------------------------------------- PBT
  def copy_member(self, dst: int, src: int) -> None:
    """Exploit: member `dst` takes `src`'s weights, optimizer state and hyperparameters."""
    if self.vmapped:
      self.states = jax.device_put(jax.tree.map(lambda x: x.at[dst].set(x[src]), self.states),
                                   self.state_sh)
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


def _eval_member(graphdef, task: str, state: dict, frozen, batch: dict) -> dict:
  # Inside the vmap: a member's averaged weights (when averaging is on) are chosen per member.
  return step.eval_step(graphdef, task, finished_run.eval_params(state), frozen, batch)
