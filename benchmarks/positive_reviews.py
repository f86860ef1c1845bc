"""Issue 18's before/after measurement: do a model's movie reviews come out positive?

For each model (`base`: SmolLM2-135M-Instruct from `jaxtune.data.assets`; a finished jaxtune run
directory; or an export / HF directory / .gguf file), one completion per held-out prompt is
sampled through jaxtune's KV-cache generator (`jaxtune.generate`, batched, seeded), the prompt
rendered with the tokenizer's chat template, at temperature 0.7. Then:

- positive: the share of completions the finished `sentiment_minilm` classifier (`--classifier`)
  labels 'positive', through `jaxtune.predict.classify` (the run's best checkpoint);
- distinct_2: unique word bigrams / all word bigrams over all completions (Li et al. 2016;
  lower-cased whitespace words, so models with different tokenizers compare alike);
- length: mean completion length in tokens, the stop token not counted;
- kl: mean over completions of sum_t [log p_model(y_t | .) - log p_base(y_t | .)] over the
  sampled tokens, the stop token included (a Monte-Carlo estimate of KL(model || base), 0 for
  the base itself);
- degenerate: the share of completions in which some token 3-gram occurs 3 or more times
  (loops such as "great great great ..." or a repeated clause).

One JSON line per model, then a markdown table (one row per model) for BENCHMARKS.md.

  python benchmarks/positive_reviews.py --models base,/path/to/run \
      --prompts review_prompts:heldout

`--prompts` is a builtin data set of prompts (rows with a 'prompt' field) or a .jsonl file of
{"prompt": ...} lines (or a .txt file, one prompt per line).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_CLASSIFIER = "workdirs/sentiment_minilm"  # where scripts/quickstart.sh leaves its run
TEMPERATURE = 0.7


# ---------------------------------------------------------------------------- pure metrics


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
  """Unique word n-grams / all word n-grams over all texts (0 when there are none)."""
  grams = [
    tuple(w[i : i + n]) for w in (t.lower().split() for t in texts) for i in range(len(w) - n + 1)
  ]
  return len(set(grams)) / len(grams) if grams else 0.0


def degenerate(tokens: Sequence[int], n: int = 3, times: int = 3) -> bool:
  """Whether some token n-gram occurs `times` or more times in `tokens`."""
  counts = collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
  return bool(counts) and max(counts.values()) >= times


def prompt_texts(prompts: str) -> list[str]:
  """The prompts of a builtin data set (rows with 'prompt': text or chat messages) or a file."""
  from jaxtune import generate

  if Path(prompts).suffix in (".jsonl", ".json", ".txt"):
    return generate.read_prompts([], prompts)
  from jaxtune.data import builtin
  from jaxtune.data.rows import BadRows

  out = []
  for row in builtin.read(prompts, BadRows()):
    p = row.fields["prompt"]
    # Chat messages: the last user turn is the request (the chat template adds the rest).
    out.append(p if isinstance(p, str) else [m["content"] for m in p if m["role"] == "user"][-1])
  return out


# ---------------------------------------------------------------------------- models


def load(spec: str):
  """(model, tokenizer) of `base`, a jaxtune run directory (`RUN_DIR@STEP`: that checkpoint, not
  the best), or an HF directory / .gguf file."""
  from jaxtune import finished_run
  from jaxtune.data import assets

  if spec == "base":
    return finished_run.load_source(model=str(assets.smollm2_gguf()))
  run_dir, at, step = spec.rpartition("@")
  if at and step.isdigit() and (Path(run_dir) / "checkpoints").is_dir():
    return finished_run.load_source(workdir=run_dir, step=int(step))
  if (Path(spec) / "checkpoints").is_dir():
    return finished_run.load_source(workdir=spec)
  return finished_run.load_source(model=spec)


def sample(
  model, tok, prompts: Sequence[str], *, seed: int, max_new_tokens: int, batch_size: int
) -> tuple[list[list[int]], list[list[int]], list[bool], float]:
  """(prompt ids, completion ids with the stop token, whether each stopped, generate seconds)."""
  from jaxtune import generate

  ids = [generate.encode(tok, p, chat=True) for p in prompts]
  stops = generate.stop_ids(tok, model.config, [])
  gen = generate.Generator(model, pad_id=generate.pad_id(tok))
  res = gen(
    ids,
    max_new_tokens=max_new_tokens,
    sampling=generate.Sampling(temperature=TEMPERATURE),
    stop_ids=stops,
    seed=seed,
    batch_size=batch_size,
  )
  stopped = [bool(c) and c[-1] in stops for c in res.tokens]
  return ids, res.tokens, stopped, res.seconds + res.compile_seconds


@functools.cache
def _logps_fn():
  import jax
  from flax import nnx

  from jaxtune.objectives import dpo_losses

  @functools.partial(jax.jit, static_argnums=0)
  def fn(graphdef, state, ids, mask, loss_mask):
    model = nnx.merge(graphdef, state)
    return dpo_losses.sequence_logps(model(ids, attention_mask=mask), ids, loss_mask)[0]

  return fn


def completion_logps(
  model,
  prompts: Sequence[list[int]],
  completions: Sequence[list[int]],
  *,
  batch_size: int = 8,
  pad_id: int = 0,
) -> np.ndarray:
  """[N] summed log-probabilities of each completion after its prompt, under `model`.

  Rows are right-padded to a multiple of 32 tokens (few compilations); positions count real
  tokens only, as the generator's do."""
  from flax import nnx

  graphdef, state = nnx.split(model)
  out = []
  for s in range(0, len(prompts), batch_size):
    rows = [p + c for p, c in zip(prompts[s : s + batch_size], completions[s : s + batch_size])]
    T = -(-max(len(r) for r in rows) // 32) * 32
    ids = np.full((batch_size, T), pad_id, np.int32)
    mask, loss_mask = np.zeros_like(ids), np.zeros_like(ids)
    for r, (p, row) in enumerate(zip(prompts[s : s + batch_size], rows)):
      ids[r, : len(row)], mask[r, : len(row)], loss_mask[r, len(p) : len(row)] = row, 1, 1
    out.append(np.asarray(_logps_fn()(graphdef, state, ids, mask, loss_mask))[: len(rows)])
  return np.concatenate(out)


def measure(
  spec: str,
  prompts: Sequence[str],
  *,
  classifier: str,
  seed: int = 0,
  max_new_tokens: int = 64,
  batch_size: int = 25,
  base=None,
) -> dict:
  """The row of one model. `base`: (model, tokenizer) of the base, for the KL (loaded if None)."""
  from jaxtune import generate, predict

  t0 = time.perf_counter()
  model, tok = load(spec)
  ids, comps, stopped, gen_s = sample(
    model, tok, prompts, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size
  )
  bodies = [c[:-1] if s else c for c, s in zip(comps, stopped)]
  texts = [tok.decode(b, skip_special_tokens=True).strip() for b in bodies]
  labels = predict.classify(classifier, texts, batch_size=32)
  if spec == "base":
    kl = np.zeros(len(comps))
  else:
    base_model, _ = base or load("base")
    pad = generate.pad_id(tok)
    kl = completion_logps(model, ids, comps, pad_id=pad) - completion_logps(
      base_model, ids, comps, pad_id=pad
    )
  return {
    "model": spec,
    "prompts": len(prompts),
    "positive": float(np.mean([label == "positive" for label, _ in labels])),
    "distinct_2": distinct_n(texts, 2),
    "length": float(np.mean([len(b) for b in bodies])),
    "kl": float(np.mean(kl)),
    "degenerate": float(np.mean([degenerate(b) for b in bodies])),
    "stopped": float(np.mean(stopped)),
    "generate_s": round(gen_s, 1),
    "wall_s": round(time.perf_counter() - t0, 1),
    "samples": [
      {"prompt": p, "completion": t, "label": label}
      for p, t, (label, _) in list(zip(prompts, texts, labels))[:5]
    ],
  }


def table(rows: Sequence[dict]) -> str:
  head = (
    "| model | positive | distinct-2 | length (tokens) | KL to base | degenerate | wall s |\n"
    "|---|---|---|---|---|---|---|"
  )
  return "\n".join(
    [head]
    + [
      f"| {r['model']} | {r['positive']:.3f} | {r['distinct_2']:.3f} | {r['length']:.1f} | "
      f"{r['kl']:.2f} | {r['degenerate']:.3f} | {r['wall_s']:.0f} |"
      for r in rows
    ]
  )


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", default="base", help="comma-separated: base, run dirs, exports")
  ap.add_argument("--prompts", default="review_prompts:heldout")
  ap.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--max_new_tokens", type=int, default=64)
  ap.add_argument("--batch_size", type=int, default=25)
  ap.add_argument("--limit", type=int, default=0, help="first N prompts only (0: all)")
  args = ap.parse_args()
  prompts = prompt_texts(args.prompts)
  prompts = prompts[: args.limit] if args.limit else prompts
  specs = args.models.split(",")
  base = load("base") if any(s != "base" for s in specs) else None
  rows = []
  for spec in specs:
    rows.append(
      measure(
        spec,
        prompts,
        classifier=args.classifier,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        base=base,
      )
    )
    print(json.dumps(rows[-1]), flush=True)
  print(table(rows))


if __name__ == "__main__":
  main()
