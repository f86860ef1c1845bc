"""What a resumed run may change: the new config and data against the run's own.

A workdir with checkpoints is a run to continue. Its config.json and run.json (data fingerprint,
label names) say what it was; the driver compares them with what it is given, before it loads
anything, and refuses a difference with every key listed (`key: run value -> new value`):
- keys that only say how the run executes (mesh, logging, checkpoint cadence, export,
  attention kernel, remat, micro-batching) may change freely;
- keys that fix the shapes or structure of the saved state (the model, task, labels, parameter
  dtype, layer stacking, LoRA rank and targets, the optimizer and which of its parts exist) are
  refused even with `--allow_config_change`;
- everything else (learning rate, schedule, steps, batch size, seq_len, the data...) is refused
  unless `--allow_config_change`; then the change is recorded in run.json (keys, old and new
  values, the step) and the optimizer's hyperparameters restored from the checkpoint are
  replaced by the new config's, so the new learning rate is the one that trains.
config.json is only rewritten (by the driver) after the checks and the restore succeed.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import ml_collections
from etils import epath

from jaxtune.errors import WorkdirError

FLAG = "--allow_config_change"
# Keys (or prefixes ending in '.') that only say how the run executes.
FREE = ("mesh.", "export.", "train.progress", "train.log_every", "train.eval_batch_size",
        "train.text_samples", "train.text_sample_tokens", "train.micro_batches",
        "model.attention", "model.remat", "model.allow_pickle", "checkpoint.every_steps",
        "checkpoint.every_minutes", "checkpoint.keep_last", "checkpoint.keep_best",
        "checkpoint.async_save", "report_to", "tracking.")
# Keys that fix the saved state's shapes or structure.
FROZEN = ("model.source", "model.task", "model.num_labels", "model.param_dtype",
          "model.scan_layers", "model.pooling", "model.config_overrides", "lora.rank",
          "lora.targets", "lora.train_also", "optim.name", "optim.freeze",
          "optim.adafactor_min_dim_size_to_factor", "labels")
# Keys whose on/off switch changes the state's structure (a part of the optimizer, the weight
# averages), with their "off" value; changing an "on" value is a hyperparameter change.
SWITCHES = {"optim.grad_clip_norm": 0, "optim.ema_decay": 0, "optim.swa_start": -1,
            "optim.unfreeze_every_steps": 0}
ABSENT = "<absent>"


def flat(d, prefix: str = "") -> dict[str, Any]:
  """A nested mapping (dict or ConfigDict) as {dotted key: leaf}."""
  out = {}
  for k, v in d.items():
    if hasattr(v, "items"):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def plain(config) -> dict:
  """A config (ConfigDict or dict) as JSON values, so tuples and lists compare equal."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


def _free(key: str) -> bool:
  return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE)


def frozen(key: str, old, new) -> bool:
  """Whether changing `key` from `old` to `new` changes the saved state's structure."""
  if key in FROZEN:
    return True
  if key in SWITCHES:
    off = SWITCHES[key]
    return (old == off) != (new == off)
  return False


def differences(run: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{key: (run value, new value)} of every key that differs and matters (not FREE)."""
  a, b = flat(plain(run)), flat(plain(new))
  out = {}
  for key in sorted(set(a) | set(b)):
    old, val = a.get(key, ABSENT), b.get(key, ABSENT)
    if old == val or _free(key) or val == ABSENT:
      continue  # (a key jaxtune no longer has cannot matter)
    if key == "model.num_labels" and 0 in (old, val):
      continue  # 0 = from the data: the label check compares what the data gives
    out[key] = (old, val)
  return out


def _listing(diffs: dict) -> str:
  return "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in diffs.items())


class Check:
  """The comparison of one resume; `Check(...)` refuses config changes at once, `data(...)`
  refuses data changes once the data is built, `apply(...)` and `record(...)` act on the
  accepted ones after the restore."""

  def __init__(self, workdir, config: ml_collections.ConfigDict, allow: bool = False):
    from jaxtune import config as jt_config

    self.workdir, self.allow = epath.Path(workdir), allow
    self.changes: dict[str, tuple[Any, Any]] = {}
    self.run_info: dict = {}
    self.active = _has_checkpoints(self.workdir) and (self.workdir / "config.json").exists()
    if not self.active:
      return
    try:
      stored = jt_config.read_run_config(self.workdir).to_dict()
    except ValueError as e:
      raise WorkdirError(f"{self.workdir / 'config.json'}: unreadable ({e}); it records the run "
                         "to resume: restore it, or use a new --workdir") from None
    run_file = self.workdir / "run.json"
    if run_file.exists():
      try:
        self.run_info = json.loads(run_file.read_text())
      except ValueError:
        self.run_info = {}
    self._accept(differences(stored, config.to_dict()), "config")

  def _accept(self, diffs: dict, what: str) -> None:
    if not diffs:
      return
    where = f"{self.workdir}: resuming a run"
    fixed = {k: v for k, v in diffs.items() if frozen(k, *v)}
    if fixed:
      raise WorkdirError(
        f"{where} with a different {what} that changes the shapes of its saved state: "
        f"{_listing(fixed)}; even {FLAG} cannot change these: use a new --workdir")
    if not self.allow:
      raise WorkdirError(
        f"{where} with a different {what}: {_listing(diffs)}; resume with the run's own "
        f"({self.workdir / 'config.json'}), pass {FLAG} to continue with the new values "
        "(recorded in run.json), or use a new --workdir")
    self.changes.update(diffs)

  def data(self, fingerprint: str, label_names) -> None:
    """Refuse (or accept, with the flag) different training data; different labels always."""
    if not self.active:
      return
    diffs = {}
    extra = self.run_info.get("extra") or {}
    old_labels, new_labels = list(extra.get("label_names") or []), list(label_names or [])
    if old_labels and new_labels and old_labels != new_labels:
      diffs["labels"] = (old_labels, new_labels)
    old_fp = self.run_info.get("data_fingerprint")
    if old_fp and fingerprint and old_fp != fingerprint:
      diffs["data fingerprint"] = (old_fp, fingerprint)
    self._accept(diffs, "data")

  def apply(self, restored_opt_state, fresh_opt_state):
    """The restored optimizer state with the new config's hyperparameters (peak learning
    rate, weight decay, betas, clip norm, ...) when changes were accepted; the schedule's
    position and lr_scale stay as restored."""
    if not self.changes:
      return restored_opt_state
    import jax
    import optax

    is_hp = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)  # noqa: E731

    def pick(restored, fresh):
      if not is_hp(restored):
        return restored
      hp = dict(restored.hyperparams)
      hp.update({k: v for k, v in fresh.hyperparams.items() if k not in ("learning_rate", "lr_scale")})
      return restored._replace(hyperparams=hp)

    return jax.tree.map(pick, restored_opt_state, fresh_opt_state, is_leaf=is_hp)

  def record(self, step: int) -> None:
    """Append the accepted changes to run.json (process 0 calls it after the restore)."""
    if not self.changes:
      return
    from jaxtune import writer

    entry = {"step": int(step),
             "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "changes": {k: {"old": v[0], "new": v[1]} for k, v in self.changes.items()}}
    writer.append_run_info(self.workdir, "config_changes", entry)


def _has_checkpoints(workdir: epath.Path) -> bool:
  ckpts = workdir / "checkpoints"
  return ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())
