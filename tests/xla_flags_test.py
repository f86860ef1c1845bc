"""jaxtune.xla_flags: merging with the user's XLA_FLAGS, the opt-out, nothing on CPU, and that
this jaxlib knows every recommended flag (XLA aborts on an unknown one)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxtune import main, xla_flags

GPU = xla_flags.recommended("gpu")


def test_gpu_flags_added_to_empty_environment():
  env = {"JAX_PLATFORMS": "cuda"}
  assert xla_flags.apply(env) == GPU
  assert env["XLA_FLAGS"].split() == list(GPU)


def test_user_flags_kept_and_win_over_recommendations():
  env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/d"}
  added = xla_flags.apply(env, platform="gpu")
  flags = env["XLA_FLAGS"].split()
  assert flags[:2] == ["--xla_gpu_enable_triton_gemm=true", "--xla_dump_to=/tmp/d"]
  assert "--xla_gpu_enable_triton_gemm=false" not in flags and "--xla_gpu_enable_triton_gemm=false" not in added
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
  # Applying twice adds nothing more.
  assert xla_flags.apply(env, platform="gpu") == ()


@pytest.mark.parametrize("value", ["1", "true"])
def test_opt_out(value):
  env = {xla_flags.OPT_OUT: value, "XLA_FLAGS": "--a=1", "JAX_PLATFORMS": "cuda"}
  assert xla_flags.apply(env) == ()
  assert env["XLA_FLAGS"] == "--a=1"


def test_nothing_on_cpu():
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.apply(env) == ()
  assert env == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.recommended("cpu") == ()


def test_unknown_platform_named():
  with pytest.raises(ValueError, match="'metal'"):
    xla_flags.recommended("metal")


def test_cli_entry_applies_flags_before_the_subcommand(monkeypatch):
  """main.run merges the flags before importing the subcommand (which may start JAX)."""
  seen = {}

  class Fake:
    @staticmethod
    def run(argv):
      seen["flags"] = os.environ.get("XLA_FLAGS")

  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  monkeypatch.delenv(xla_flags.OPT_OUT, raising=False)
  monkeypatch.setattr(main.importlib, "import_module", lambda name: Fake)
  main.run(["jaxtune", "train"])
  assert seen["flags"].split() == ["--xla_dump_to=/tmp/x", *GPU]


def test_recommended_gpu_flags_known_to_this_jaxlib():
  """XLA parses every --xla_gpu_* flag on any platform and aborts on an unknown name, so a
  CPU process catches a flag renamed or removed by a jaxlib upgrade before a GPU run does."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(GPU))
  proc = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
