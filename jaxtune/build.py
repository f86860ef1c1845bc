"""A run's model, optimizer and initial train state, built from its config.

`build_state` is what the driver trains and what `jaxtune.finished_run` restores a checkpoint
into: the model loaded (HF weights or a preset) with the head its objective trains, placed on
the mesh, split into trainable and frozen weights (LoRA), with its optimizer and state shardings.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
from flax import nnx

from jaxtune import objectives, optim, sharding, step
from jaxtune.config import parse_overrides
from jaxtune.models import layers, presets


def load_model(config: ml_collections.ConfigDict, mesh, num_labels: int | None,
               label_names: tuple[str, ...] = (), restoring: bool = False):
  """The model, placed on the mesh: HF weights, or random ones from a preset.

  Label names from the data become the model's id2label, so an export knows its classes.
  `restoring`: a run's checkpoint replaces the weights next, so a head the HF source lacks is
  not reported as initialised fresh.
  """
  m = config.model
  objective = objectives.get(config)
  compute = None if m.compute_dtype == m.param_dtype else m.compute_dtype
  if m.source.startswith("preset:"):
    model = presets.init(m.source.removeprefix("preset:"), task=objective.head,
                         num_labels=num_labels, param_dtype=m.param_dtype, compute_dtype=compute, mesh=mesh,
                         seed=config.seed, pooling=m.pooling,
                         config_overrides=parse_overrides(m.config_overrides))
  else:
    from jaxtune import hf
    from jaxtune.hf import convert

    overrides = parse_overrides(m.config_overrides)
    if objective.labels and label_names:
      overrides.update(convert.label_config(label_names))
    model = hf.load(m.source, task=objective.head, num_labels=num_labels, param_dtype=m.param_dtype,
                    compute_dtype=compute, mesh=mesh, allow_pickle=m.allow_pickle,
                    config_overrides=overrides, seed=config.seed, pooling=m.pooling,
                    restoring=restoring, quantize=m.quantize, keep_float=config.lora.train_also)
  if m.quantize and m.source.startswith("preset:"):
    from jaxtune import quantize

    quantize.apply(model, m.quantize, config.lora.train_also)  # random weights: after building
  if objective.head == "seq_cls" and (hasattr(model, "pooled_index") or hasattr(model, "last_token_index")):
    from jaxtune.data import classification

    classification.pool_where_data_pads(model, config)  # decoders score the last non-pad token
  model.remat = m.remat
  layers.set_attention(model, m.attention)
  if config.lora.rank > 0:
    from jaxtune import lora

    model = lora.apply(model, config.lora)
  if m.scan_layers:
    layers.stack_layers(model, mesh)  # after LoRA, so adapters stack with their layers
  return model


def split_model(model, config) -> tuple[nnx.GraphDef, nnx.GraphDef, dict, dict | None]:
  """(train graphdef, eval graphdef, trainable params, frozen params or None)."""
  graphs = []
  for mode in ("train", "eval"):
    getattr(model, mode)()
    if config.lora.rank > 0:
      from jaxtune import lora

      graphdef, trainable, frozen = lora.split_trainable(model, config.lora)
      frozen = frozen.to_pure_dict()
    else:
      graphdef, trainable = nnx.split(model)
      frozen = None
    graphs.append(graphdef)
  return graphs[0], graphs[1], trainable.to_pure_dict(), frozen


def _state_shardings(state, mesh):
  """Shardings of every state leaf as placed (params from their logical names, optimizer
  moments by XLA's propagation from them), with scalars replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: x.sharding if isinstance(x, jax.Array) and x.ndim else replicated, state)


@dataclasses.dataclass
class Built:
  """Everything the loop and `jaxtune eval` need about the model and its training state."""

  train_graphdef: nnx.GraphDef
  eval_graphdef: nnx.GraphDef
  frozen: dict | None
  tx: object
  schedule: object
  state: dict
  state_sh: dict
  model_config: object = None

  def abstract(self) -> dict:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.state, self.state_sh)


def model_and_optimizer(config, mesh, num_labels: int | None, total_steps: int,
                        label_names: tuple[str, ...] = (), restoring: bool = False) -> tuple:
  """(model_config, train_graphdef, eval_graphdef, params, frozen, tx, schedule): the model
  loaded and split trainable / frozen, and its optimizer. Reads no concrete array, so
  `jax.eval_shape` can run it (benchmarks/compile_time.py compiles without allocating)."""
  model = load_model(config, mesh, num_labels, label_names, restoring)
  num_layers = layers.num_layers(model.layers)
  train_graphdef, eval_graphdef, params, frozen = split_model(model, config)
  tx, schedule = optim.build_optimizer(config.optim, params, total_steps, num_layers)
  return model.config, train_graphdef, eval_graphdef, params, frozen, tx, schedule


def build_state(config, mesh, num_labels: int | None, total_steps: int,
                label_names: tuple[str, ...] = (), restoring: bool = False) -> Built:
  """Load the model, split trainable from frozen, build the optimizer and the initial state
  (`restoring`: see `load_model`)."""
  model_config, train_graphdef, eval_graphdef, params, frozen, tx, schedule = model_and_optimizer(
    config, mesh, num_labels, total_steps, label_names, restoring)
  with sharding.use_mesh(mesh):
    state = jax.jit(functools.partial(step.init_state, tx=tx, seed=config.seed,
                                      optim_cfg=config.optim))(params)
  return Built(train_graphdef, eval_graphdef, frozen, tx, schedule, state,
               _state_shardings(state, mesh), model_config)


def check_vocab(model_config, splits, config) -> None:
  """Token ids past the embedding table would be clamped silently inside XLA: refuse them."""
  vocab = getattr(model_config, "vocab_size", None)
  for name, ds in splits.splits.items():
    top = max(int(v.max(initial=0)) for k, v in ds.arrays.items() if k.endswith("input_ids"))
    if vocab is not None and top >= vocab:
      raise ValueError(
        f"data: the {name} split has token id {top}, but the model's vocabulary has {vocab} "
        f"entries: data.tokenizer={config.data.tokenizer or config.model.source!r} does not "
        f"match model.source={config.model.source!r}"
      )


def make_eval_fn(eval_graphdef, config, mesh):
  # Replicated outputs: every process can read all predictions (multi-host evaluation).
  options = objectives.get(config).options(config)
  return jax.jit(functools.partial(step.eval_step, eval_graphdef, config.model.task, options=options),
                 out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
