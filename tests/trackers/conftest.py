"""Shared setup for the tracker tests: the tiny recipe shrunk to a few steps, and W&B kept
offline, quiet and inside the test's directory (no network, no files in $HOME)."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

# One JAX compilation cache for the session, as tests/tune has: the runs of a test (a failed
# run and its resume, a study's trials) load the programs the first compiled.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "jaxtune_tests_jax_cache"))

REPO = Path(__file__).resolve().parents[2]
# The tiny recipe, shrunk: one device, short rows, small batches, 6 steps.
SMALL = {"mesh.data": 1, "data.seq_len": 32, "train.batch_size": 8, "data.eval_rows": 16,
         "train.steps": 6, "train.log_every": 3, "train.eval_every": 3,
         "optim.warmup_steps": 2, "checkpoint.every_steps": 1000,
         "checkpoint.async_save": False, "train.progress": False}


@pytest.fixture
def tiny_config():
  sys.path.insert(0, str(REPO))
  from configs import tiny
  from jaxtune.tune import space

  return space.apply(tiny.get_config(), SMALL)


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch, tmp_path):
  """W&B offline, without console capture, system stats, git or code lookups (which slow a
  run down), its cache and settings under tmp_path."""
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  for name, value in {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                      "WANDB__DISABLE_STATS": "true", "WANDB__DISABLE_META": "true",
                      "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}.items():
    monkeypatch.setenv(name, value)
  for name in ("CACHE", "DATA", "CONFIG", "ARTIFACT"):
    monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / "wandb_home" / name.lower()))
  monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
