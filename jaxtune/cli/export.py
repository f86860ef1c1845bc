"""`jaxtune export --workdir=DIR --out=DIR [--merge_lora] [--dtype=bfloat16] [--step=N]`,
or `jaxtune export --workdir=DIR --format=gguf --out=FILE.gguf [--quant=f16|q8_0|bf16|f32]`.

Writes a run's best weights (averaged weights when the run kept them) as an HF directory that
transformers loads: config.json, safetensors, the tokenizer, and a README.md model card (base
model, data, training config, final metrics). A LoRA run's adapters are folded into the weights
(--merge_lora) or written as a PEFT adapter directory (--nomerge_lora); without either flag the
run's export.merge_lora decides (True by default). --out must be new, empty, or an earlier
export's folder (listed in its .jaxtune-outputs.json); --overwrite writes among other files.

--format=gguf writes a causal LM (llama, qwen2, qwen3, gemma3; LoRA always merged) as one
llama.cpp GGUF file with its tokenizer and chat template, for llama.cpp and Ollama; --out must be
a new .gguf file (never overwritten).
"""

from __future__ import annotations

from absl import flags

from jaxtune.cli import run_app
from jaxtune.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished (or interrupted) `jaxtune train` run.")
_OUT = flags.DEFINE_string("out", None, "Directory to write the HF model into.")
_MERGE = flags.DEFINE_boolean("merge_lora", None, "LoRA runs: merge the adapters (default: the run's export.merge_lora).")
_DTYPE = flags.DEFINE_string("dtype", None, "Weight dtype to write (default: the run's export.dtype, else as trained).")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step to export (-1: the best, else the latest).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Write into --out even if it holds files jaxtune did not write.")
_FORMAT = flags.DEFINE_enum("format", "hf", ["hf", "gguf"], "hf: an HF directory; gguf: one llama.cpp GGUF file (causal LMs).")
_QUANT = flags.DEFINE_string("quant", None, "--format=gguf: weight type of the 2-D tensors: f16 (default), q8_0, bf16 or f32.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  from jaxtune import export, finished_run, workdir_lock

  workdir = workdir_lock.require(_WORKDIR.value)
  if _FORMAT.value == "gguf":
    return _gguf(workdir)
  if _QUANT.value is not None:
    raise ConfigError("--quant is for --format=gguf; an HF export takes --dtype")
  # Refuse a bad --dtype or --out before the (possibly long) restore; save checks again.
  export.check_dtype(_DTYPE.value, "--dtype")
  export.output_folder(_OUT.value, workdir, overwrite=_OVERWRITE.value)
  run = finished_run.load_run(workdir, step=_STEP.value)
  out = export.save(run.model, _OUT.value, run.tokenizer, run.config, workdir=run.workdir,
                    merge_lora=_MERGE.value, dtype=_DTYPE.value, overwrite=_OVERWRITE.value)
  print(f"exported step {run.step} of {run.workdir} to {out}")


def _gguf(workdir) -> None:
  from jaxtune import config as jt_config
  from jaxtune import export, finished_run

  for name, flag in (("--dtype", _DTYPE), ("--nomerge_lora", _MERGE)):
    if flag.value is not None and (name != "--nomerge_lora" or not flag.value):
      raise ConfigError(f"{name} is for --format=hf; a GGUF export merges LoRA and takes --quant")
  if _OVERWRITE.value:
    raise ConfigError("--overwrite is for --format=hf; a GGUF export never replaces a file: give "
                      "a new --out")
  quant = _QUANT.value or "f16"
  # Refuse a classifier run, a bad --quant or an existing --out before the (long) restore.
  export.check_gguf(jt_config.read_run_config(workdir), _OUT.value, quant)
  run = finished_run.load_run(workdir, step=_STEP.value)
  out = export.save_gguf(run.model, _OUT.value, run.tokenizer, run.config, quant=quant)
  print(f"exported step {run.step} of {run.workdir} to {out} (GGUF, {quant})")


def run(argv):
  run_app(__name__, main, argv)
