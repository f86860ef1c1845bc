"""Shared setup for the search tests: a tiny recipe small enough for many trials, and one JAX
compilation cache for the session (trials of one shape share their compiled programs, as they
do in a real study), also used by the `jaxtune tune` subprocesses."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "jaxtune_tests_jax_cache"))

REPO = Path(__file__).resolve().parents[2]
# The tiny recipe, shrunk: one device, short rows, small batches, few evaluation rows.
SMALL = {"mesh.data": 1, "data.seq_len": 32, "train.batch_size": 8, "data.eval_rows": 16,
         "checkpoint.every_steps": 1000, "checkpoint.async_save": False}


@pytest.fixture
def tiny_config():
  sys.path.insert(0, str(REPO))
  from configs import tiny
  from jaxtune.tune import space

  return space.apply(tiny.get_config(), SMALL)


@pytest.fixture
def tiny_search():
  from configs.search import tiny

  def make(algorithm="tpe", **budget):
    s = tiny.get_config(algorithm)
    s.budget.trials = budget.get("trials", 2)
    return s

  return make


def cli_args(workdir, *extra) -> list[str]:
  """`jaxtune tune` on the tiny recipe and search, as a subprocess command line."""
  args = [sys.executable, "-m", "jaxtune.main", "tune", f"--config={REPO}/configs/tiny.py",
          f"--search={REPO}/configs/search/tiny.py", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in SMALL.items()]
  return args + list(extra)


def cli_env() -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)  # one CPU device is all a tiny trial needs
  return env
