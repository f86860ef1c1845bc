"""Preference optimisation (`model.task='preference'`): DPO, IPO, hinge, SimPO and ORPO.

Rows to arrays: `jaxtune.data.preference` (`data.kind='preference'`): a prompt with a chosen
and a rejected answer, plain text or chat messages, loss masks on the answers. Loss: the
`c.preference.loss` of `dpo_losses` over the summed answer log-probabilities of the policy
(chosen and rejected in one forward pass) and, for the DPO kinds (sigmoid, ipo, hinge), of the
reference (`c.preference.reference`):
- 'adapters_off' (the default with LoRA): the frozen base, the same model with its adapters
  switched off (`reference.adapters_off`), in the same step; no second copy of the weights;
- 'precomputed' (the default for full fine-tuning): log-probabilities of the initial weights,
  computed once before training for every pair of every split, stored in
  workdir/reference_logps.npz and reused on resume (never recomputed from trained weights);
  they reach the step as the batch's `ref_chosen_logps` / `ref_rejected_logps`.
SimPO and ORPO need no reference. The loss is a sum over pairs with the number of pairs as
weight, so micro-batches add up exactly. Metrics, on train (train/<name>) and validation
(eval/<name>): loss, rewards/chosen, rewards/rejected, rewards/accuracy, rewards/margin,
logps/chosen, logps/rejected. A finished run is a causal LM: it exports and generates as one.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtune.errors import ConfigError
from jaxtune.objectives import dpo_losses
from jaxtune.objectives.base import merge
from jaxtune.objectives.causal_lm import CausalLM
from jaxtune.objectives.reference import adapters_off

log = logging.getLogger(__name__)

LOSSES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
REFERENCES = ("auto", "adapters_off", "precomputed")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
           "logps/chosen", "logps/rejected")
REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
REFERENCE_FILE = "reference_logps.npz"
# dpo_losses' metric names (TRL's) -> jaxtune's.
_RENAME = {"rewards/accuracies": "rewards/accuracy", "rewards/margins": "rewards/margin"}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.loss = "sigmoid"  # sigmoid (DPO) | ipo | hinge | simpo | orpo
  c.beta = 0.1  # DPO kinds and SimPO: the inverse temperature of the implicit reward
  c.label_smoothing = 0.0  # sigmoid and simpo: the assumed share of flipped pairs (cDPO)
  c.simpo_gamma = 0.5  # simpo: the target reward margin
  c.orpo_lambda = 0.1  # orpo: weight of the odds-ratio term next to the SFT term
  # DPO kinds: weight of the chosen answers' mean token NLL added to the loss (RPO); 0 = none
  c.sft_weight = 0.0
  # DPO kinds: auto (adapters_off with LoRA, else precomputed) | adapters_off | precomputed
  c.reference = "auto"
  return c


def _fail(key: str, value, why: str):
  raise ConfigError(f"config: preference.{key}={value!r}: {why}")


def needs_reference(p) -> bool:
  return p.loss in dpo_losses.DPO_KINDS


def resolve_reference(config) -> str:
  """'adapters_off', 'precomputed' or '' (the loss needs no reference)."""
  p = config.preference
  if not needs_reference(p):
    return ""
  if p.reference == "auto":
    return "adapters_off" if config.lora.rank > 0 else "precomputed"
  return p.reference


def check_config(c) -> None:
  """The preference section and what it needs of the others; errors name the key."""
  p = c.preference
  if p.loss not in LOSSES:
    _fail("loss", p.loss, f"expected one of {LOSSES}")
  if p.reference not in REFERENCES:
    _fail("reference", p.reference, f"expected one of {REFERENCES}")
  if not (p.beta > 0 and np.isfinite(p.beta)):
    _fail("beta", p.beta, "must be a finite number > 0")
  if not 0 <= p.label_smoothing < 0.5:
    _fail("label_smoothing", p.label_smoothing, "must be in [0, 0.5)")
  if not (p.orpo_lambda >= 0 and np.isfinite(p.orpo_lambda)):
    _fail("orpo_lambda", p.orpo_lambda, "must be a finite number >= 0")
  if not (p.sft_weight >= 0 and np.isfinite(p.sft_weight)):
    _fail("sft_weight", p.sft_weight, "must be a finite number >= 0")
  if p.sft_weight and p.loss not in dpo_losses.DPO_KINDS:
    _fail("sft_weight", p.sft_weight, f"adds an SFT term to {dpo_losses.DPO_KINDS} only; "
          f"{p.loss!r} " + ("has its own (orpo_lambda weighs the other term)" if p.loss == "orpo"
                            else "takes none") + "; set it to 0")
  if not np.isfinite(p.simpo_gamma):
    _fail("simpo_gamma", p.simpo_gamma, "must be a finite number")
  if p.label_smoothing and p.loss not in ("sigmoid", "simpo"):
    _fail("label_smoothing", p.label_smoothing, f"only sigmoid and simpo smooth labels, not {p.loss!r}")
  if c.data.kind != "preference":
    raise ConfigError(f"config: data.kind={c.data.kind!r}: model.task='preference' trains on "
                      "prompt/chosen/rejected rows; set data.kind='preference'")
  if c.train.length_buckets:
    raise ConfigError(f"config: train.length_buckets={c.train.length_buckets}: not supported with "
                      "model.task='preference' (a pair's two sequences share one width); set it to 0")
  ref = resolve_reference(c)
  if ref == "adapters_off" and c.lora.rank == 0:
    _fail("reference", p.reference, "the base with adapters off needs LoRA (lora.rank > 0); "
          "use 'precomputed' (or 'auto') for full fine-tuning")


def policy_logps(model, batch: dict, dropout_rng) -> tuple[jax.Array, ...]:
  """([B] chosen, [B] rejected summed answer log-probabilities, and their [B] token counts),
  both answers in one forward pass of 2B rows."""
  ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]])
  mask = jnp.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
  loss_mask = jnp.concatenate([batch["chosen_loss_mask"], batch["rejected_loss_mask"]])
  logits = model(ids, attention_mask=mask, dropout_rng=dropout_rng)
  logps, counts = dpo_losses.sequence_logps(logits, ids, loss_mask)
  b = batch["chosen_input_ids"].shape[0]
  return logps[:b], logps[b:], counts[:b], counts[b:]


def pair_loss(opts: dict, model, batch: dict, dropout_rng, valid=None) -> dpo_losses.PairLoss:
  """The configured loss of `model` on a batch of pairs (`opts`: `Preference.options`)."""
  pc, pr, nc, nr = policy_logps(model, batch, dropout_rng)
  kind = opts["loss"]
  if kind == "simpo":
    return dpo_losses.simpo_loss(pc, pr, nc, nr, beta=opts["beta"], gamma=opts["simpo_gamma"],
                                 label_smoothing=opts["label_smoothing"], valid=valid)
  if kind == "orpo":
    return dpo_losses.orpo_loss(pc, pr, nc, nr, lam=opts["orpo_lambda"], valid=valid)
  if opts["reference"] == "adapters_off":
    # The same dropout key as the policy: at the start (adapters zero) both agree exactly.
    rc, rr, _, _ = policy_logps(adapters_off(model), batch, dropout_rng)
  else:
    if REF_KEYS[0] not in batch:
      raise ConfigError("preference.reference='precomputed': this batch carries no reference "
                        "log-probabilities (they exist only for the run's own splits, "
                        f"workdir/{REFERENCE_FILE}); a full fine-tuned preference run scores other "
                        "files by generating, not by `jaxtune eval`")
    rc, rr = batch[REF_KEYS[0]], batch[REF_KEYS[1]]
  rc, rr = jax.lax.stop_gradient(rc), jax.lax.stop_gradient(rr)
  return dpo_losses.dpo_loss(pc, pr, rc, rr, beta=opts["beta"], kind=kind,
                             label_smoothing=opts["label_smoothing"], chosen_counts=nc,
                             rejected_counts=nr, sft_weight=opts["sft_weight"], valid=valid)


def _extras(out: dpo_losses.PairLoss) -> dict:
  return {_RENAME.get(k, k): (v, out.weight) for k, v in out.sums.items()}


class Preference(CausalLM):
  name = "preference"
  head = "causal_lm"
  base_metrics = ("loss", *METRICS)
  line_metrics = ("loss", "rewards/accuracy", "rewards/margin")
  table_metrics = ("loss", "rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected")

  def options(self, config) -> ml_collections.FrozenConfigDict:
    """What the step needs of the config (static, hashable): the loss and the reference."""
    p = config.preference
    return ml_collections.FrozenConfigDict({
      "loss": p.loss, "beta": float(p.beta), "label_smoothing": float(p.label_smoothing),
      "simpo_gamma": float(p.simpo_gamma), "orpo_lambda": float(p.orpo_lambda),
      "sft_weight": float(p.sft_weight), "reference": resolve_reference(config)})

  def check_config(self, config) -> None:
    check_config(config)

  def batch_weight(self, batch, cfg):
    return jnp.asarray(batch["chosen_input_ids"].shape[0], jnp.float32)

  def loss_terms(self, model, batch, dropout_rng, cfg):
    out = pair_loss(cfg.options, model, batch, dropout_rng)
    return out.loss_sum, out.weight, _extras(out)

  def eval_sums(self, model, batch, lm_loss_chunk=-1, options=None):
    out = pair_loss(options, model, batch, None, valid=batch.get("valid"))
    return {"loss_sum": out.loss_sum, "weight": out.weight, "extras": _extras(out)}

  def metrics(self, sums, label_names=(), order=None):
    return {"loss": sums.loss_sum / max(sums.weight, 1e-9), **sums.extra_means()}, {}

  # ------------------------------------------------------------------ stored reference
  def before_training(self, config, workdir, splits, built, mesh, restoring: bool) -> None:
    """Precomputed reference: reference_logps.npz read (a resumed run) or computed from the
    initial weights and written, then added to every split's arrays."""
    ref = resolve_reference(config)
    if ref == "adapters_off":
      _check_only_adapters_train(built.state["params"], config)
    if ref != "precomputed":
      return
    from etils import epath

    path = epath.Path(workdir) / REFERENCE_FILE
    fingerprints = {name: ds.fingerprint() for name, ds in splits.splits.items()}
    if path.exists():
      with path.open("rb") as f:
        stored = dict(np.load(f))
      for name, ds in splits.splits.items():
        if str(stored.get(f"{name}/fingerprint")) != fingerprints[name]:
          raise ConfigError(f"{path}: its reference log-probabilities were computed for other "
                            f"{name} data; the run's data changed: start a new workdir")
        for k in REF_KEYS:
          ds.arrays[k] = stored[f"{name}/{k}"]
      log.info("reference log-probabilities read from %s", path)
      return
    if restoring:
      raise ConfigError(f"{path} is missing: a resumed full fine-tuning run cannot recompute its "
                        "reference from trained weights; start a new workdir")
    from jaxtune import averaging, sharding

    fn = jax.jit(functools.partial(_reference_logps, built.eval_graphdef))
    # The initial weights (what finished_run.eval_params picks; that module imports the driver's).
    params = averaging.params_for_eval(built.state.get("avg"), built.state["params"])
    out = {}
    with sharding.use_mesh(mesh):
      for name, ds in splits.splits.items():
        logps = _batched(fn, params, built.frozen, ds, config.train.eval_batch_size)
        for k, v in zip(REF_KEYS, logps):
          ds.arrays[k] = out[f"{name}/{k}"] = v
        out[f"{name}/fingerprint"] = np.asarray(fingerprints[name])
    if jax.process_index() == 0:
      tmp = path.parent / (path.name + ".tmp")
      with tmp.open("wb") as f:
        np.savez(f, **out)
      tmp.rename(path)
    log.info("reference log-probabilities of the initial weights written to %s", path)


def _check_only_adapters_train(params, config) -> None:
  """With the base as reference, base weights trained too (lora.train_also) would move it."""
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [str(getattr(k, "key", k)) for k in path]
    if not {"lora_a", "lora_b"} & set(names):
      raise ConfigError(
        f"config: lora.train_also={config.lora.train_also!r} trains {'/'.join(names)}: with "
        "preference.reference='adapters_off' the reference (the base) would move with it; "
        "narrow lora.train_also or set preference.reference='precomputed'")


def _reference_logps(graphdef, params, frozen, batch):
  pc, pr, _, _ = policy_logps(merge(graphdef, params, frozen), batch, None)
  return pc, pr


def _batched(fn, params, frozen, ds, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """([N] chosen, [N] rejected) reference log-probabilities over every row of `ds`."""
  from jaxtune.data import preference as data_preference

  keys = data_preference.KEYS
  n = len(ds)
  chosen, rejected = [], []
  for start in range(0, n, batch_size):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)  # last batch padded: one shape
    batch = {k: ds.arrays[k][idx] for k in keys}
    c, r = jax.device_get(fn(params, frozen, batch))
    keep = min(batch_size, n - start)
    chosen.append(np.asarray(c[:keep], np.float32))
    rejected.append(np.asarray(r[:keep], np.float32))
  return np.concatenate(chosen), np.concatenate(rejected)


OBJECTIVE = Preference()
