"""Weights & Biases: one run per workdir, offline unless the user chose otherwise.

Mode: `WANDB_MODE` when set (the user's choice, e.g. `online` or `disabled`); else online when
`WANDB_API_KEY` is set; else offline, so a run never contacts wandb.ai by surprise. Offline runs
live in `WORKDIR/wandb/offline-run-*`; `wandb sync WORKDIR/wandb/offline-run-*` uploads them.
Project: `tracking.experiment` (the recipe's name from the CLI); group: `tracking.group` (a
search study's name); id: kept in workdir/trackers.json so a resume continues the run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import string
import tempfile
from collections.abc import Mapping
from typing import Any

from jaxtune import writer
from jaxtune.trackers import common

log = logging.getLogger(__name__)
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 143}
_ID_CHARS = string.ascii_lowercase + string.digits
_live = [0]  # open W&B runs of this process; the last one to finish stops W&B's service


def mode() -> str | None:
  """The W&B mode to ask for; None lets W&B read WANDB_MODE."""
  if os.environ.get("WANDB_MODE"):
    return None
  return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbTracker:
  """The W&B run of one workdir; see the package doc for what it logs."""

  def __init__(self, config, workdir):
    import wandb

    self.workdir = workdir
    self._closed = False
    self._texts: dict[str, list[list[Any]]] = {}
    old = common.read_ids(workdir).get("wandb", {})
    # Chosen here (as W&B would: 8 of [a-z0-9]) to be recorded for a resume.
    run_id = old.get("run_id") or "".join(secrets.choice(_ID_CHARS) for _ in range(8))
    # W&B writes its run files locally; a remote workdir's go to a temporary directory.
    local = tempfile.mkdtemp(prefix="jaxtune_wandb_") if writer.is_remote(workdir) else workdir
    os.makedirs(local, exist_ok=True)
    self.run = wandb.init(
      project=common.experiment(config),
      name=common.run_name(config, workdir),
      group=config.tracking.group or None,
      id=run_id,
      resume="allow",
      dir=os.fspath(local),
      config=json.loads(config.to_json_best_effort()),
      mode=mode(),
      reinit="create_new",  # one run per tracker: PBT members are open at once
    )
    _live[0] += 1
    common.register(self)  # from here on, a failure ends the run FAILED
    if not old:
      common.write_id(workdir, "wandb", {"run_id": run_id, "project": self.run.project})

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    values = common.finite(metrics)
    if values:
      self.run.log(values, step=int(step))

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Each tag is a table of (step, text) rows, logged whole again with every new row (W&B
    tables are immutable once logged)."""
    import wandb

    rows = self._texts.setdefault(tag, [])
    rows.append([int(step), text])
    self.run.log({tag: wandb.Table(columns=["step", "text"], data=rows)}, step=int(step))

  def write_hparams(
    self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int | None = None
  ) -> None:
    self.run.config.update(dict(hparams), allow_val_change=True)
    self.run.summary.update(common.finite(metrics))

  def close(self, status: str = "FINISHED") -> None:
    """Final results into the summary, the workdir's outputs as run files, the export as a
    model artifact; then finishes the run."""
    if self._closed:
      return
    self._closed = True
    import wandb

    try:
      self.run.summary.update(common.results_metrics(self.workdir))
      if not writer.is_remote(self.workdir):
        for path in common.output_files(self.workdir):
          self.run.save(os.fspath(path), base_path=os.fspath(self.workdir), policy="now")
        export = common.export_dir(self.workdir)
        if export is not None:
          name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.run.name or self.run.id}-export")
          art = wandb.Artifact(name, type="model")
          # Referenced in place: an export can be gigabytes, W&B's default would copy it.
          art.add_dir(os.fspath(export), skip_cache=True, policy="immutable")
          self.run.log_artifact(art)
      if status == "KILLED":
        self.run.mark_preempting()
    finally:
      self.run.finish(exit_code=EXIT_CODES.get(status, 1))
      _live[0] -= 1
      if _live[0] == 0:
        wandb.teardown()  # stops W&B's background service instead of leaving it running
