"""`jaxtune generate --workdir=DIR | --model=SOURCE --prompt=TEXT [--prompt=..] | --prompts_file=F`.

Generates with a KV cache from a finished run's best weights (with its LoRA adapters) or from
any model `jaxtune.hf.load` reads (HF directory, hub id, .gguf, 'preset:NAME' needs a
--tokenizer). Greedy by default; --temperature > 0 samples (with --top_k / --top_p, seeded).
--chat wraps each prompt in the tokenizer's chat template (with --system). Rows stop at EOS
or a --stop token. Completions go to stdout (and --out as jsonl); tokens/s go to stderr.
--prompts_file: .txt (one prompt per line) or .jsonl/.json rows with a 'prompt' field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import flags

from jaxtune.cli import run_app
from jaxtune.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A `jaxtune train` run to generate with (its best weights).")
_MODEL = flags.DEFINE_string("model", None, "Or a model: HF directory, hub id, .gguf file or 'preset:NAME'.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer source if it differs from the model's.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for a batch).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", "", "Prompts: .txt one per line, or .jsonl with 'prompt'.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt (at most).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sample from softmax(logits / T).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set with this much probability.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STOP = flags.DEFINE_multi_string("stop", [], "Extra stop token (a vocabulary token or an integer id).")
_CHAT = flags.DEFINE_boolean("chat", False, "Wrap prompts in the tokenizer's chat template.")
_SYSTEM = flags.DEFINE_string("system", "", "System message for --chat.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts generated together (one compile per batch shape).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Parameter dtype for --model (float32, bfloat16).")
_STEP = flags.DEFINE_integer("step", -1, "--workdir checkpoint step (-1: the best, else the latest).")
_OUT = flags.DEFINE_string("out", "", "Also write {prompt, completion, tokens} rows to this jsonl file.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace an existing --out file.")


def main(argv):
  del argv
  from jaxtune import finished_run, generate, outputs, workdir_lock

  if flags.FLAGS["workdir"].present:
    workdir_lock.require(_WORKDIR.value)
  # Everything the flags alone decide is checked before a model is loaded.
  sampling = generate.Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
  for name, value in (("max_new_tokens", _MAX_NEW.value), ("batch_size", _BATCH.value)):
    if value < 1:
      raise ConfigError(f"--{name}={value}: must be >= 1")
  if _OUT.value:  # before the model loads: a refused --out costs nothing
    outputs.check_new_file(_OUT.value, flag="--out", overwrite=_OVERWRITE.value,
                           inputs=(_PROMPTS_FILE.value,))
  prompts = generate.read_prompts(_PROMPT.value, _PROMPTS_FILE.value)
  model, tok = finished_run.load_source(workdir=_WORKDIR.value, model=_MODEL.value,
                                    tokenizer=_TOKENIZER.value, dtype=_DTYPE.value, step=_STEP.value)
  ids = [generate.encode(tok, p, chat=_CHAT.value, system=_SYSTEM.value) for p in prompts]
  gen = generate.Generator(model, pad_id=generate.pad_id(tok))
  res = gen(ids, max_new_tokens=_MAX_NEW.value, sampling=sampling, seed=_SEED.value,
            stop_ids=generate.stop_ids(tok, model.config, _STOP.value),
            batch_size=min(_BATCH.value, len(ids)))
  rows = []
  for prompt, tokens in zip(prompts, res.tokens, strict=True):
    text = tok.decode(tokens, skip_special_tokens=True)
    rows.append({"prompt": prompt, "completion": text, "tokens": tokens})
    print(text if len(prompts) == 1 else f"### {prompt}\n{text}\n", flush=True)
  if _OUT.value:
    Path(_OUT.value).write_text("".join(json.dumps(r) + "\n" for r in rows))
  print(f"generated {res.new_tokens} tokens for {len(prompts)} prompts in {res.seconds:.2f} s: "
        f"{res.tokens_per_s:.1f} tokens/s (compile {res.compile_seconds:.1f} s, not counted)",
        file=sys.stderr)


def run(argv):
  run_app(__name__, main, argv)
