"""Generation speed on the CPU: `jaxtune.generate` against transformers' `generate`, SmolLM2 GGUF.

Both sides load the offline SmolLM2-135M-Instruct Q4_1 GGUF dequantized to float32 (jaxtune
through `jaxtune.hf.load`, transformers through `gguf_file=`), take the same chat-templated
prompts (left-padded batches), and decode greedily exactly `--new_tokens` tokens per row (stop
tokens off on both sides, so the work is equal). Each (side, batch) pair runs once untimed
(jaxtune: compilation; torch: warm caches), then `--repeats` timed runs; tokens/s is
batch * new_tokens over the median wall time, prefill included on both sides.

  python benchmarks/generate_smollm2.py --batches=1,8 --new_tokens=32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

QUESTIONS = [
  "What is the capital of France?", "Name three primary colours.",
  "Why is the sky blue?", "Write a haiku about rain.", "What is 12 times 7?",
  "Who wrote Hamlet?", "Give me a tip for learning to cook.", "What does a CPU do?",
]


def prompts(tok, batch: int) -> list[list[int]]:
  from jaxtune import generate

  return [generate.encode(tok, QUESTIONS[i % len(QUESTIONS)], chat=True) for i in range(batch)]


def jaxtune_side(path: str, batches: list[int], new_tokens: int, repeats: int) -> dict:
  from jaxtune import finished_run, generate

  model, tok = finished_run.load_source(model=path)
  gen = generate.Generator(model, pad_id=generate.pad_id(tok))
  out = {}
  for b in batches:
    ids = prompts(tok, b)
    first = gen(ids, max_new_tokens=new_tokens)
    times = []
    for _ in range(repeats):
      res = gen(ids, max_new_tokens=new_tokens)
      assert res.new_tokens == b * new_tokens and res.tokens == first.tokens
      times.append(res.seconds)
    out[b] = {"tokens_per_s": b * new_tokens / statistics.median(times), "seconds": times,
              "compile_s": first.compile_seconds, "sample": tok.decode(first.tokens[0])}
  return out


def torch_side(path: str, batches: list[int], new_tokens: int, repeats: int) -> dict:
  from pathlib import Path

  import torch
  import transformers

  from jaxtune import hf

  p = Path(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(
    p.parent, gguf_file=p.name, dtype=torch.float32).eval()
  tok = hf.load_tokenizer(path)  # the same ids as the jaxtune side
  out = {}
  for b in batches:
    ids = prompts(tok, b)
    P = max(len(x) for x in ids)
    input_ids = torch.tensor([[0] * (P - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids])
    kw = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
              do_sample=False, pad_token_id=0)
    with torch.no_grad():
      first = model.generate(input_ids, **kw)
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        res = model.generate(input_ids, **kw)
        times.append(time.perf_counter() - t0)
        assert res.shape[1] == P + new_tokens
    out[b] = {"tokens_per_s": b * new_tokens / statistics.median(times), "seconds": times,
              "sample": tok.decode(first[0, P:].tolist())}
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--new_tokens", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--sides", default="jaxtune,torch")
  args = ap.parse_args()
  from jaxtune.data import assets

  path = str(assets.smollm2_gguf())
  batches = [int(b) for b in args.batches.split(",")]
  sides = {"jaxtune": jaxtune_side, "torch": torch_side}
  results = {}
  for side in args.sides.split(","):
    t0 = time.perf_counter()
    results[side] = sides[side](path, batches, args.new_tokens, args.repeats)
    results[side]["wall_s"] = time.perf_counter() - t0
  for side, rows in results.items():
    for b in batches:
      print(f"{side:8s} batch {b}: {rows[b]['tokens_per_s']:7.1f} tokens/s "
            f"(median of {args.repeats}: {statistics.median(rows[b]['seconds']):.2f} s)")
  if "jaxtune" in results and "torch" in results:
    for b in batches:
      print(f"jaxtune / torch, batch {b}: "
            f"{results['jaxtune'][b]['tokens_per_s'] / results['torch'][b]['tokens_per_s']:.2f}x")
  print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
  main()
