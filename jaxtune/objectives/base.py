"""The interface every training objective implements, and what the objectives share.

An objective answers, for one value of `model.task`, every question the driver, evaluation, the
search, export and prediction used to answer by comparing the task string:

- rows to arrays: `splits` / `eval_split` (the readers, bad-row handling, chat templates and
  packing of `jaxtune.data`, which picks them by `data.kind`);
- the loss over a batch: `batch_weight` and `loss_terms`, pure and jittable, as (sum, weight)
  pairs so that micro-batches add up exactly to the whole batch (`jaxtune.losses`);
- evaluation: `eval_sums` per batch on the device, `metrics` over a split on the host, and the
  metric names a config may pick (`metric_names`, `accepts_metric`);
- a finished run: what an export writes (`generates`, `fixed_length`, the card's `usage`) and
  what it predicts (`predict`).

The architecture is not the objective's: `head` names the model head it trains (the `task`
argument of `jaxtune.models` and `jaxtune.hf`), and the models keep their own checks of which
heads each family has.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

# Keys of a batch that the model consumes (the rest feed the loss).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "positions", "segment_ids")


def model_kwargs(batch: dict) -> dict:
  """The model's keyword inputs from `batch` (all of MODEL_INPUTS it has but the ids)."""
  return {k: batch[k] for k in MODEL_INPUTS if k in batch and k != "input_ids"}


def merge(graphdef: nnx.GraphDef, params: dict, frozen: dict | None) -> nnx.Module:
  """The model from trainable `params` and, with LoRA, the `frozen` base weights."""
  return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)


class Objective:
  """One training objective (`model.task`); subclasses override what differs."""

  name: str = ""  # the model.task value
  head: str = ""  # the model head it trains: the `task` argument of models.presets / hf.load
  labels: bool = False  # rows carry class labels (num_labels, class weights, per-class metrics)
  # Train batches are sampled from the current weights each step (GRPO), by the driver-level
  # `jaxtune.rollout.Rollouts` (it generates and scores with other runs), not read from the data.
  on_policy: bool = False
  generates: bool = False  # the model writes text (text samples, generation_config, GGUF)
  # The exported model reads at most data.seq_len tokens, cut by truncation (its tokenizer's
  # model_max_length says so).
  fixed_length: bool = False
  pipeline_tag: str | None = None  # the HF hub pipeline of an export (model card)
  auto_classes: tuple[str, str] = ("AutoModel", "AutoPeftModel")  # transformers, PEFT
  base_metrics: tuple[str, ...] = ("loss",)  # what an evaluation reports (eval/<name>)
  line_metrics: tuple[str, ...] = ("loss",)  # shown on the console's evaluation line
  table_metrics: tuple[str, ...] = ("loss",)  # and in the final table

  # ------------------------------------------------------------------------- rows to arrays
  def splits(self, config, workdir):
    """The train / validation (/ test) splits of `config.data`, as `jaxtune.data.Splits`."""
    from jaxtune import data

    return data.build(config, workdir)

  def eval_split(self, config, source: str, workdir):
    """One split, 'eval', of every row of `source`, encoded as the run encoded its data."""
    from jaxtune import data

    return data.build_eval(config, source, workdir)

  # ------------------------------------------------------------------------ configuration
  def options(self, config):
    """What the loss and evaluation need of the run config beyond the step's own settings, as
    a hashable value (a FrozenConfigDict): static under jit, `StepConfig.options` in the step
    and the `options` of `eval_sums`. None when nothing."""
    return None

  def check_config(self, config) -> None:
    """The objective's own config checks (`jaxtune.config.validate`); errors name the key."""

  def before_training(self, config, workdir, splits, built, mesh, restoring: bool) -> None:
    """Called by the driver once the model is built and before any step or restore, with the
    initial weights in `built` (abstract when `restoring`): may add arrays to the splits."""

  # ---------------------------------------------------------------------------------- loss
  def batch_weight(self, batch: dict, cfg) -> jax.Array:
    """The whole batch's weight (tokens, examples), the denominator of every micro-batch's
    share. `cfg` is the step's `jaxtune.step.StepConfig`."""
    raise NotImplementedError

  def loss_terms(self, model, batch: dict, dropout_rng, cfg) -> tuple:
    """(loss sum, weight) of `model` on `batch` while training (dropout from `dropout_rng`).

    An objective with metrics of its own returns a third item, {name: (sum, weight)}: the step
    adds each pair over micro-batches and logs `train/<name>` = sum / weight (no gradient)."""
    raise NotImplementedError

  def eval_sums(self, model, batch: dict, lm_loss_chunk: int = -1, options=None) -> dict:
    """One evaluation batch on the device: `loss_sum`, `weight` and any per-example outputs
    `metrics` reads (rows with `valid`=0 are padding). Sums of its own go under `extras` as
    {name: (sum, weight)}; `jaxtune.evaluate.Sums` adds them up over the split (`extras`).
    `options` is `self.options(config)`."""
    raise NotImplementedError

  # ------------------------------------------------------------------------------- metrics
  def metric_names(self, label_names: Sequence[str] = ()) -> tuple[str, ...]:
    """The eval/* scalars an evaluation writes."""
    return tuple(f"eval/{m}" for m in self.base_metrics)

  def accepts_metric(self, name: str, label_names: Sequence[str] = ()) -> bool:
    """Whether checkpoint.best_metric=`name` can be judged before the data's labels are known."""
    return name in self.metric_names(label_names)

  def metrics(self, sums, label_names: Sequence[str] = (), order=None) -> tuple[dict, dict]:
    """(metrics, per-example details in the data set's order) from `jaxtune.evaluate.Sums`."""
    raise NotImplementedError

  # -------------------------------------------------------------------------- finished run
  def usage(self, config, here: str, *, sbert: bool, chat: bool) -> list[str]:
    """The model card's usage snippet for a merged (not adapter-only) export."""
    raise NotImplementedError

  def predict(self, restored, texts: Sequence[str], *, batch_size: int):
    """What a finished run predicts for raw texts (`restored`: `jaxtune.finished_run.Restored`)."""
    from jaxtune.errors import ConfigError

    raise ConfigError(f"{restored.workdir / 'config.json'}: model.task={self.name!r} predicts "
                      "no labels from texts (a causal LM generates: `jaxtune generate`)")
