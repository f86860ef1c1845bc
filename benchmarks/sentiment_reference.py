"""`configs/sentiment_minilm.py` against a plain HF transformers + torch loop, in one sitting.

Both sides fine-tune the real MiniLM-L6 encoder on the same seeded 80/10/10 split of the
10,605 Rotten Tomatoes snippets (the split comes from jaxtune's data code, so the rows are
identical) and score the same test rows.

  torch    BertForSequenceClassification, AdamW (weight decay 0.01), linear warmup (10%) and
           decay, batch 32, max length 64 with per-batch dynamic padding (DataCollatorWithPadding
           style), dropout on, seeded shuffling; test accuracy and F1 at the end. The loop an HF
           user writes by hand (the issue's reference: 1 epoch, lr 5e-5).
  jaxtune  `jaxtune train --config=configs/sentiment_minilm.py` as a subprocess (load, compile,
           train, periodic validation, best checkpoint, test), timed end to end.

Tokens/s on both sides is real (non-padding) training tokens seen, divided by the whole run's
wall time (loading, training and evaluation included): the throughput a user experiences.
The sides run one after the other, so neither competes with the other for the cores.

  python benchmarks/sentiment_reference.py                      # torch 1 epoch, then jaxtune
  python benchmarks/sentiment_reference.py --sides torch --epochs 3
  python benchmarks/sentiment_reference.py --sides jaxtune --jaxtune-args=--config.train.epochs=2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "configs/sentiment_minilm.py"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--sides", default="torch,jaxtune")
  p.add_argument("--epochs", type=float, default=1.0, help="torch side")
  p.add_argument("--lr", type=float, default=5e-5, help="torch side")
  p.add_argument("--batch", type=int, default=32, help="torch side")
  p.add_argument("--max-length", type=int, default=64, help="torch side")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--jaxtune-args", default="", help="extra flags for `jaxtune train`")
  p.add_argument("--workdir", default="", help="jaxtune workdir ('' = a temporary one)")
  p.add_argument("--json", default="", help="also write the results here")
  return p.parse_args(argv)


def recipe_splits():
  """The recipe's train/test rows as (texts, label ids), exactly as jaxtune splits them."""
  from jaxtune import data as data_lib
  from jaxtune.data import classification, readers

  sys.path.insert(0, str(ROOT))
  from configs import sentiment_minilm

  config = sentiment_minilm.get_config()
  d = data_lib._with_builtin_defaults(config.data)
  rows = data_lib.read_splits(d, readers.BadRows("error"))
  keys = {s: [classification.label_key(r.fields[d.label_column], d.label_column) for r in rs]
          for s, rs in rows.items()}
  names = classification.infer_label_names(keys["train"])
  index = {n: i for i, n in enumerate(names)}
  out = {}
  for split, rs in rows.items():
    texts = [classification.text_field(r.fields, d.text_column) for r in rs]
    out[split] = (texts, [classification.label_id(k, names, index) for k in keys[split]])
  return config, out, names


def run_torch(args) -> dict:
  import torch
  import transformers

  from jaxtune import metrics

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  t0 = time.perf_counter()
  config, splits, names = recipe_splits()
  source = config.model.source
  tok = transformers.AutoTokenizer.from_pretrained(source)
  tok.backend_tokenizer.no_padding()  # the shipped tokenizer.json pads to 128 by default
  model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(names))
  enc = {s: tok(texts, truncation=True, max_length=args.max_length)["input_ids"]
         for s, (texts, _) in splits.items()}

  def collate(ids_list):
    width = max(len(x) for x in ids_list)
    ids = torch.full((len(ids_list), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids_list), width), dtype=torch.long)
    for i, x in enumerate(ids_list):
      ids[i, : len(x)] = torch.tensor(x)
      mask[i, : len(x)] = 1
    return ids, mask

  train_ids, train_labels = enc["train"], np.asarray(splits["train"][1])
  steps_per_epoch = len(train_ids) // args.batch
  total = max(1, round(args.epochs * steps_per_epoch))
  no_decay = ("bias", "LayerNorm.weight")
  groups = [
    {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
     "weight_decay": 0.01},
    {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
     "weight_decay": 0.0},
  ]
  opt = torch.optim.AdamW(groups, lr=args.lr)
  sched = transformers.get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
  rng = np.random.default_rng(args.seed)
  model.train()
  tokens, order, t_train = 0, np.array([], np.int64), time.perf_counter()
  for step in range(total):
    if len(order) < args.batch:
      order = rng.permutation(len(train_ids))
    idx, order = order[: args.batch], order[args.batch :]
    ids, mask = collate([train_ids[i] for i in idx])
    out = model(input_ids=ids, attention_mask=mask, labels=torch.as_tensor(train_labels[idx]))
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    tokens += int(mask.sum())
    if step % 50 == 0:
      print(f"torch step {step}/{total} loss {out.loss.item():.4f}", flush=True)
  train_s = time.perf_counter() - t_train

  model.eval()
  preds = []
  with torch.no_grad():
    test_ids = enc["test"]
    for start in range(0, len(test_ids), 128):
      ids, mask = collate(test_ids[start : start + 128])
      preds.append(model(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy())
  res = metrics.classification_metrics(np.concatenate(preds), np.asarray(splits["test"][1]),
                                       len(names), names)
  wall = time.perf_counter() - t0
  return {"side": "torch", "epochs": args.epochs, "steps": total, "wall_s": wall,
          "train_s": train_s, "train_tokens": tokens, "tokens_per_s": tokens / wall,
          "test_accuracy": res["accuracy"], "test_f1_macro": res["f1_macro"]}


def run_jaxtune(args) -> dict:
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sentiment_"))
  cmd = [sys.executable, "-m", "jaxtune.main", "train", f"--config={RECIPE}",
         f"--workdir={workdir}", "--config.train.progress=False", *shlex.split(args.jaxtune_args)]
  print("$", " ".join(cmd), flush=True)
  t0 = time.perf_counter()
  subprocess.run(cmd, cwd=ROOT, check=True)
  wall = time.perf_counter() - t0
  results = json.loads((workdir / "results.json").read_text())
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  # Each log row covers the steps since the previous one: tokens = rate x elapsed time.
  tokens, last = 0.0, 0
  for r in rows:
    if "train/tokens_per_sec" in r:
      tokens += r["train/tokens_per_sec"] * r["train/step_time_s"] * (r["step"] - last)
      last = r["step"]
  config = json.loads((workdir / "config.json").read_text())
  return {"side": "jaxtune", "epochs": config["train"]["epochs"], "steps": last, "wall_s": wall,
          "train_tokens": round(tokens), "tokens_per_s": tokens / wall,
          "test_accuracy": results["test"]["accuracy"], "test_f1_macro": results["test"]["f1_macro"],
          "best_step": results.get("best_step"), "workdir": str(workdir)}


def main(argv=None) -> None:
  args = parse_args(argv)
  out = []
  for side in args.sides.split(","):
    out.append({"torch": run_torch, "jaxtune": run_jaxtune}[side](args))
    print(json.dumps(out[-1]), flush=True)
  print("\n| side | epochs | wall s | train tokens/s (real, end to end) | test acc | test F1 |")
  print("|---|---|---|---|---|---|")
  for r in out:
    print(f"| {r['side']} | {r['epochs']} | {r['wall_s']:.0f} | {r['tokens_per_s']:.0f} | "
          f"{r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} |")
  if len(out) == 2:
    print(f"\ntokens/s ratio {out[1]['side']}/{out[0]['side']}: "
          f"{out[1]['tokens_per_s'] / out[0]['tokens_per_s']:.2f}x")
  if args.json:
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
  main()
