"""A sentiment recipe (`configs/sentiment_minilm.py`, `configs/sentiment_mpnet.py`) against a plain
HF transformers + torch loop, in one sitting.

Both sides fine-tune the recipe's real encoder (`--recipe`; MiniLM-L6 by default) on the same
seeded 80/10/10 split of the 10,605 Rotten Tomatoes snippets (the split comes from jaxtune's data
code, so the rows are identical) and score the same validation and test rows.

  torch    BertForSequenceClassification, AdamW (weight decay 0.01), linear warmup (10%) and
           decay, batch 32, max length 64 with per-batch dynamic padding (DataCollatorWithPadding
           style), dropout on, seeded shuffling; validation and test accuracy and F1 at the end
           (the last weights: there is no checkpoint choice). The loop an HF user writes by hand
           (issue 4's reference: 1 epoch, lr 5e-5). A recipe with `model.pooling='mean'`
           (sentiment_mpnet) gets the same head as jaxtune's: AutoModel, the masked mean of the
           last hidden states, dropout, one linear layer.
           `--match-recipe` takes the epochs, learning rate, warmup steps, batch size, max length,
           weight decay, clip norm and layer-wise lr decay (one AdamW group per layer depth)
           from the recipe instead (and, as jaxtune, decays no bias, norm or embedding), so
           the two sides run the same hyperparameters; with the recipe's
           `optim.swa_start`, torch tests the same average of its weights (torch's AveragedModel,
           sampled at the same steps) instead of its last weights.
  jaxtune  `jaxtune train --config=configs/sentiment_minilm.py` as a subprocess (load, compile,
           train, periodic validation, best checkpoint, test), timed end to end.

Tokens/s on both sides is real (non-padding) training tokens seen, divided by the whole run's
wall time (loading, training and evaluation included): the throughput a user experiences.
Examples/s likewise. jaxtune's compile time is the sum of XLA's own compile times of the run's
train and eval steps (`JAX_LOG_COMPILES`); torch runs eagerly and compiles nothing.
The sides run one after the other, so neither competes with the other for the cores.

  python benchmarks/sentiment_reference.py                      # torch 1 epoch, then jaxtune
  python benchmarks/sentiment_reference.py --sides torch --epochs 3
  python benchmarks/sentiment_reference.py --sides jaxtune --jaxtune-args=--config.train.epochs=2
  python benchmarks/sentiment_reference.py --recipe=configs/sentiment_mpnet.py --match-recipe \
    --sides jaxtune,torch
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "configs/sentiment_minilm.py"
# XLA's own compile time of one jitted program, as JAX_LOG_COMPILES=1 logs it.
COMPILE_RE = re.compile(r"Finished XLA compilation of jit\((\w+)\) in ([0-9.]+) sec")
# The steps whose compile time counts: the train step and the evaluation's forward pass.
STEP_FNS = ("counted_step", "eval_step")
# Parameter names torch's AdamW does not decay. `--match-recipe` adds the embeddings, as
# jaxtune's optim.DEFAULT_EXCLUDE does (MPNet's relative_attention_bias is caught by "bias").
NO_DECAY = ("bias", "LayerNorm.weight")
NO_DECAY_AS_JAXTUNE = ("bias", "LayerNorm.weight", "embeddings.")
# Layer i of a transformers encoder: `...encoder.layer.<i>.` (BERT, MPNet).
TORCH_LAYER = re.compile(r"(^|\.)layer\.(\d+)\.")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--sides", default="torch,jaxtune")
  p.add_argument("--recipe", default=RECIPE,
                 help="the jaxtune recipe: its model, split and (jaxtune side) training")
  p.add_argument("--match-recipe", action="store_true",
                 help="torch side: the recipe's epochs, lr, warmup, batch, max length, weight "
                      "decay and clip norm instead of the flags below")
  p.add_argument("--epochs", type=float, default=1.0, help="torch side")
  p.add_argument("--lr", type=float, default=5e-5, help="torch side")
  p.add_argument("--warmup", type=float, default=0.1, help="torch side: fraction of the steps")
  p.add_argument("--batch", type=int, default=32, help="torch side")
  p.add_argument("--max-length", type=int, default=64, help="torch side")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--jaxtune-args", default="", help="extra flags for `jaxtune train`")
  p.add_argument("--workdir", default="", help="jaxtune workdir ('' = a temporary one)")
  p.add_argument("--json", default="", help="also write the results here")
  return p.parse_args(argv)


def load_recipe(recipe: str = RECIPE):
  """The recipe's config (`configs/x.py` or `configs/x.py:variant`, relative to the repo root)."""
  from jaxtune import recipes

  return recipes.load(ROOT / recipe)


def torch_settings(args, config) -> dict:
  """The torch loop's hyperparameters: the flags, or with --match-recipe the recipe's own."""
  if not args.match_recipe:
    return {"epochs": args.epochs, "lr": args.lr, "warmup_fraction": args.warmup,
            "batch": args.batch, "max_length": args.max_length, "weight_decay": 0.01,
            "clip": 1.0, "no_decay": NO_DECAY, "swa_start": -1, "swa_every": 1,
            "layerwise_lr_decay": 1.0}
  o, t = config.optim, config.train
  # What the torch loop cannot do the same way is refused rather than silently run otherwise.
  unlike = {"optim.name": (o.name, "adamw"), "optim.schedule": (o.schedule, "linear"),
            "optim.min_lr_ratio": (o.min_lr_ratio, 0.0), "train.epochs": (t.epochs > 0, True),
            "optim.ema_decay": (o.ema_decay, 0.0),
            "train.micro_batches": (t.micro_batches, 1)}
  bad = [f"{k}={v!r} (the torch loop needs {want!r})" for k, (v, want) in unlike.items()
         if v != want]
  if bad:
    raise SystemExit(f"--match-recipe: {args.recipe} sets {', '.join(bad)}")
  return {"epochs": float(t.epochs), "lr": float(o.learning_rate), "warmup_steps": int(o.warmup_steps),
          "batch": int(t.batch_size), "max_length": int(config.data.seq_len),
          "weight_decay": float(o.weight_decay), "clip": float(o.grad_clip_norm),
          "no_decay": NO_DECAY_AS_JAXTUNE, "swa_start": int(o.swa_start),
          "swa_every": int(o.swa_every), "layerwise_lr_decay": float(o.layerwise_lr_decay)}


def layer_depth(name: str, num_layers: int) -> int:
  """jaxtune's layer-wise decay exponent (optim._Rules.depth) of a torch parameter name: 0 for the
  top layer and the head, L-1-i for layer i, L for the tables below the layers (embeddings and
  MPNet's shared relative-position bias, which jaxtune's `embed` pattern also matches)."""
  m = TORCH_LAYER.search(name)
  if m:
    return num_layers - 1 - int(m.group(2))
  return num_layers if ("embeddings." in name or "relative_attention_bias" in name) else 0


def swa_samples(step: int, hp: dict) -> bool:
  """Whether the weights after 0-based update `step` join the average (jaxtune's averaging.py)."""
  start = hp["swa_start"]
  return start >= 0 and step >= start and (step - start) % hp["swa_every"] == 0


def recipe_splits(recipe: str = RECIPE):
  """The recipe's rows per split as (texts, label ids), exactly as jaxtune splits them."""
  from jaxtune import data as data_lib
  from jaxtune.data import classification, readers

  config = load_recipe(recipe)
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


def torch_classifier(source: str, num_labels: int, pooling: str):
  """transformers' classifier for the [CLS] pooler; for 'mean', the encoder with jaxtune's
  mean-pooled head (masked mean of the last hidden states, dropout, one linear layer)."""
  import torch
  import transformers

  if pooling == "cls":
    return transformers.AutoModelForSequenceClassification.from_pretrained(source,
                                                                          num_labels=num_labels)

  class MeanPooled(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = transformers.AutoModel.from_pretrained(source, add_pooling_layer=False)
      cfg = self.encoder.config
      self.dropout = torch.nn.Dropout(cfg.hidden_dropout_prob)
      self.classifier = torch.nn.Linear(cfg.hidden_size, num_labels)
      torch.nn.init.normal_(self.classifier.weight, std=cfg.initializer_range)  # as HF's heads
      torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask, labels=None):
      h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
      m = attention_mask[..., None].to(h.dtype)
      logits = self.classifier(self.dropout((h * m).sum(1) / m.sum(1).clamp(min=1e-9)))
      loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
      return transformers.modeling_outputs.SequenceClassifierOutput(loss=loss, logits=logits)

  return MeanPooled()


def run_torch(args) -> dict:
  import torch
  import transformers

  from jaxtune import metrics

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  t0 = time.perf_counter()
  config, splits, names = recipe_splits(args.recipe)
  hp = torch_settings(args, config)
  source = config.model.source
  tok = transformers.AutoTokenizer.from_pretrained(source)
  tok.backend_tokenizer.no_padding()  # the shipped tokenizer.json pads to 128 by default
  model = torch_classifier(source, len(names), config.model.pooling)
  enc = {s: tok(texts, truncation=True, max_length=hp["max_length"])["input_ids"]
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
  batch = hp["batch"]
  steps_per_epoch = len(train_ids) // batch
  if args.match_recipe:  # jaxtune's count: whole batches per epoch, steps rounded up (train.py)
    total = max(1, int(np.ceil(hp["epochs"] * steps_per_epoch)))
    warmup = hp["warmup_steps"]
  else:
    total = max(1, round(hp["epochs"] * steps_per_epoch))
    warmup = int(hp["warmup_fraction"] * total)
  no_decay = hp["no_decay"]
  num_layers = 1 + max(int(m.group(2)) for n, _ in model.named_parameters()
                       if (m := TORCH_LAYER.search(n)))
  # One group per (decayed?, layer depth): the learning rate falls by layerwise_lr_decay per layer
  # down from the top, as jaxtune's optim.layerwise_lr_decay (1.0: two groups, as usual).
  groups = {}
  for n, p in model.named_parameters():
    decayed = not any(k in n for k in no_decay)
    depth = layer_depth(n, num_layers)
    group = groups.setdefault((decayed, depth), {
      "params": [], "weight_decay": hp["weight_decay"] if decayed else 0.0,
      "lr": hp["lr"] * hp["layerwise_lr_decay"] ** depth})
    group["params"].append(p)
  opt = torch.optim.AdamW(list(groups.values()), lr=hp["lr"])
  sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
  rng = np.random.default_rng(args.seed)
  # A running mean of the sampled weights (the first sample copies them), as jaxtune's SWA.
  swa = torch.optim.swa_utils.AveragedModel(model) if hp["swa_start"] >= 0 else None
  model.train()
  tokens, examples, order, t_train = 0, 0, np.array([], np.int64), time.perf_counter()
  for step in range(total):
    if len(order) < batch:
      order = rng.permutation(len(train_ids))
    idx, order = order[:batch], order[batch:]
    ids, mask = collate([train_ids[i] for i in idx])
    out = model(input_ids=ids, attention_mask=mask, labels=torch.as_tensor(train_labels[idx]))
    out.loss.backward()
    if hp["clip"] > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), hp["clip"])
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if swa is not None and swa_samples(step, hp):
      swa.update_parameters(model)
    tokens += int(mask.sum())
    examples += len(idx)
    if step % 50 == 0:
      print(f"torch step {step}/{total} loss {out.loss.item():.4f}", flush=True)
  train_s = time.perf_counter() - t_train

  if swa is not None and int(swa.n_averaged) > 0:
    model = swa.module  # the average is what jaxtune validates and tests too
  model.eval()
  res = {}
  with torch.no_grad():
    for split in ("validation", "test"):
      preds = []
      for start in range(0, len(enc[split]), 128):
        ids, mask = collate(enc[split][start : start + 128])
        preds.append(model(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy())
      res[split] = metrics.classification_metrics(
        np.concatenate(preds), np.asarray(splits[split][1]), len(names), names)
  wall = time.perf_counter() - t0
  return {"side": "torch", "epochs": hp["epochs"], "steps": total, "wall_s": wall,
          "train_s": train_s, "train_tokens": tokens, "tokens_per_s": tokens / wall,
          "train_examples": examples, "examples_per_s": examples / wall, "compile_s": 0.0,
          "val_accuracy": res["validation"]["accuracy"],
          "test_accuracy": res["test"]["accuracy"], "test_f1_macro": res["test"]["f1_macro"]}


def run_jaxtune(args) -> dict:
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sentiment_"))
  cmd = [sys.executable, "-m", "jaxtune.main", "train", f"--config={args.recipe}",
         f"--workdir={workdir}", "--config.train.progress=False", *shlex.split(args.jaxtune_args)]
  print("$", " ".join(cmd), flush=True)
  t0 = time.perf_counter()
  # JAX_LOG_COMPILES logs every compilation with its time; those lines are read here, the
  # rest of the run's log passes through.
  proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_LOG_COMPILES": "1"})
  compiles = []
  for line in proc.stderr:
    m = COMPILE_RE.search(line)
    if m:
      compiles.append((m.group(1), float(m.group(2))))
    elif "Compiling jit(" not in line:
      sys.stderr.write(line)
  if proc.wait():
    raise subprocess.CalledProcessError(proc.returncode, cmd)
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
  examples = last * config["train"]["batch_size"]  # every batch is full (pipeline.Batcher)
  step_compiles = [t for name, t in compiles if name in STEP_FNS]
  return {"side": "jaxtune", "epochs": config["train"]["epochs"], "steps": last, "wall_s": wall,
          "train_tokens": round(tokens), "tokens_per_s": tokens / wall,
          "train_examples": examples, "examples_per_s": examples / wall,
          "compile_s": sum(step_compiles), "compilations": len(step_compiles),
          "compile_all_s": sum(t for _, t in compiles),
          "val_accuracy": results["val"]["accuracy"],
          "test_accuracy": results["test"]["accuracy"], "test_f1_macro": results["test"]["f1_macro"],
          "best_step": results.get("best_step"), "workdir": str(workdir)}


def main(argv=None) -> None:
  args = parse_args(argv)
  out = []
  for side in args.sides.split(","):
    out.append({"torch": run_torch, "jaxtune": run_jaxtune}[side](args))
    print(json.dumps(out[-1]), flush=True)
  print("\n| side | epochs | wall s | compile s | train tokens/s (real, end to end) | examples/s | "
        "val acc | test acc | test F1 |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in out:
    print(f"| {r['side']} | {r['epochs']} | {r['wall_s']:.0f} | {r['compile_s']:.0f} | "
          f"{r['tokens_per_s']:.0f} | {r['examples_per_s']:.2f} | {r['val_accuracy']:.4f} | "
          f"{r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} |")
  if len(out) == 2:
    print(f"\ntokens/s ratio {out[1]['side']}/{out[0]['side']}: "
          f"{out[1]['tokens_per_s'] / out[0]['tokens_per_s']:.2f}x")
  if args.json:
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
  main()
