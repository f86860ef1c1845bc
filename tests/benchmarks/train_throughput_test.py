"""benchmarks/train_throughput.py (and its CPU entry point cpu_throughput.py): a tiny run on CPU
through the real subprocess workers, and the FLOP and parameter counts behind MFU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import cpu_throughput  # noqa: E402
import train_throughput as tt  # noqa: E402

TINY = ["--device", "cpu", "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
        "--intermediate", "128", "--vocab", "256", "--seq", "32", "--batch", "2", "--steps", "2",
        "--warmup", "1", "--threads", "1"]


def run_script(script: str, *flags: str, tmp_path: Path) -> tuple[dict, str]:
  out = tmp_path / "summary.json"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TINY, *flags,
                         "--json-out", str(out)], env=env, capture_output=True, text=True,
                        timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_tiny_side_by_side_run_reports_every_figure(tmp_path):
  summary, stdout = run_script("train_throughput.py", "--sides", "torch,jax", tmp_path=tmp_path)
  assert summary["benchmark"] == "train_throughput" and summary["platform"] == "cpu"
  assert summary["weights"] == "one shared checkpoint"
  assert summary["flops_per_step"] == tt.flops_per_step(tt.parse_args(TINY))
  sides = summary["sides"]
  assert set(sides) == {"torch", "jax"}
  for r in sides.values():
    assert "error" not in r, r
    assert r["tokens_per_s"] > 0 and r["step_s_median"] > 0 and r["first_step_s"] > 0
    assert "mfu" in r and r["mfu"] is None  # no peak FLOP/s for CPUs
    assert r["peak_memory_mib"] > 0
  assert sides["torch"]["ratio_vs_torch"] == 1.0
  assert sides["jax"]["ratio_vs_torch"] == pytest.approx(
    sides["jax"]["tokens_per_s"] / sides["torch"]["tokens_per_s"])
  # Same checkpoint, same batches, float32 on both sides: the same first loss.
  assert sides["jax"]["first_loss"] == pytest.approx(sides["torch"]["first_loss"], abs=1e-4)
  rows = [line for line in stdout.splitlines() if line.startswith("| ")]
  assert [r.split(" | ")[5] for r in rows] == ["torch", "jax"]


@pytest.mark.slow
def test_cpu_throughput_entry_point_keeps_issue_3_report(tmp_path):
  summary, stdout = run_script("cpu_throughput.py", "--sides", "torch,jax", tmp_path=tmp_path)
  assert summary["benchmark"] == "cpu_throughput"
  assert summary["ratio_jax_vs_torch"] == pytest.approx(summary["sides"]["jax"]["ratio_vs_torch"])
  assert "ratio jaxtune (float32) / torch:" in stdout
  assert "`python benchmarks/cpu_throughput.py --device cpu" in stdout


@pytest.mark.slow
def test_lora_sides_jaxtune_against_peft(tmp_path):
  summary, _ = run_script("train_throughput.py", "--sides", "torch,jax", "--lora-rank", "4",
                          tmp_path=tmp_path)
  for r in summary["sides"].values():
    assert "error" not in r, r
    assert r["tokens_per_s"] > 0
  assert summary["lora_rank"] == 4


def test_param_counts_match_torch_for_presets():
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  from jaxtune.models import presets

  for name in ("tiny-llama", "llama3-1b"):
    hf = dict(presets.PRESETS[name])
    hf["max_position_embeddings"] *= 2
    with torch.device("meta"):  # shapes only: no 1B allocation
      model = LlamaForCausalLM(LlamaConfig(**hf))
    assert tt.param_counts(hf)["params"] == sum(p.numel() for p in model.parameters()), name


def test_flops_per_step_formula():
  args = tt.parse_args(["--device", "cpu", "--model", "1b", "--seq", "2048", "--batch", "4"])
  c = tt.param_counts(args.hf)
  # Llama 3.2 1B: 1.24B parameters with the tied embedding counted once.
  assert c["params"] == pytest.approx(1.236e9, rel=1e-3)
  tokens = 4 * 2048
  attention = 6 * 16 * 4 * 2048**2 * 32 * 64  # causal: half of the full score and value matmuls
  assert tt.flops_per_step(args) == 6 * c["matmul_params"] * tokens + attention
  args.lora_rank = 8
  assert tt.flops_per_step(args) < 6 * c["matmul_params"] * tokens  # no weight gradients


def test_gpu_only_modes_refused_on_cpu(capsys):
  with pytest.raises(SystemExit):
    tt.parse_args(["--device", "cpu", "--find-max"])
  assert "--find-max measures device memory" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cpu_throughput.parse_args(["--device", "gpu"])
  with pytest.raises(SystemExit):
    tt.parse_args(["--model", "70b"])
