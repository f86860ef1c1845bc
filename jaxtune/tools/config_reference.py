"""Writes docs/config_reference.md from the code: `python -m jaxtune.tools.config_reference`.

Every key of `jaxtune.config.default()` with its default and the comment that documents it in
the source (the comment on the key's line, or the comment lines right above it), section by
section, followed by each recipe's changes to the defaults. Sections built by a call such as
`c.optim = optim.default_config()` are followed into that function's source, so a new section
is documented as soon as its defaults are commented. tests/docs/config_reference_test.py fails
when the committed file differs from this output.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from jaxtune import recipes

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "config_reference.md"
COMMAND = "python -m jaxtune.tools.config_reference > docs/config_reference.md"
# Recipe variants to list besides the plain recipe (configs/<name>.py:<variant>).
VARIANTS = {"sentiment_minilm": ("quick",), "sentiment_mpnet": ("quick",), "sft_smollm2": ("quick",)}
# The meaning of keys whose source line carries no comment (the name and the code say it there).
# A key documented in the source takes its comment instead; new keys belong in the source.
IMPLICIT = {
  "seed": "seeds random initialisation (presets, new heads), data order, dropout, synthetic data",
  "model.task": "causal_lm (language modelling, SFT) | seq_cls (sequence classification) | "
                "reward (reward model on preference pairs)",
  "model.param_dtype": "dtype the weights are stored and updated in: float32 | bfloat16 | float16",
  "model.compute_dtype": "dtype of the matmuls: bfloat16 on GPU/TPU; float32 on CPU",
  "model.allow_pickle": "allow loading pickle (.bin/.pt) checkpoints; off: only safetensors / GGUF",
  "data.eval_rows": "kind='synthetic' only: generated rows per evaluation split",
  "data.split_seed": "seed of the split (and of the max_rows / max_train_rows / max_kept_train_rows subsets)",
  "data.text_column": "column with the text (classification; SFT with sft_format='text')",
  "data.label_column": "column with the label (classification)",
  "data.prompt_column": "column with the prompt (SFT, sft_format='prompt_completion')",
  "data.completion_column": "column with the completion (SFT, sft_format='prompt_completion')",
  "data.messages_column": "column with the chat messages (SFT, sft_format='chat')",
  "train.steps": "optimizer steps (ignored when train.epochs > 0)",
  "train.log_every": "steps between train/* rows in metrics.jsonl and TensorBoard",
  "train.eval_batch_size": "examples per evaluation batch (a memory knob)",
  "train.progress": "show a progress bar and a line per evaluation on the console (process 0)",
  "train.early_stopping_min_delta": "smallest change of best_metric that counts as improvement",
  "optim.nesterov": "sgd: Nesterov momentum",
  "optim.rmsprop_decay": "rmsprop: decay of the squared-gradient average",
  "optim.adafactor_decay_rate": "adafactor: decay rate of the factored second moment",
  "optim.adafactor_min_dim_size_to_factor": "adafactor: factor only dimensions at least this big",
  "optim.warmup_steps": "linear warmup from 0 to learning_rate over this many steps",
  "checkpoint.every_steps": "save every N steps (0 = off; the last step is always saved)",
  "checkpoint.every_minutes": "also save every M minutes of training (0 = off)",
  "checkpoint.keep_last": "newest checkpoints kept (resume uses the newest)",
  "checkpoint.keep_best": "best checkpoints by best_metric kept (results and export use the best)",
  "checkpoint.best_metric": "eval metric that picks the best checkpoint and drives early stopping",
  "checkpoint.best_mode": "min | max: whether lower or higher best_metric is better",
  "checkpoint.async_save": "write checkpoints in the background while training continues",
  "mesh.data": "data-parallel ways; -1 = the devices the other axes leave",
  "mesh.fsdp": "ways to shard parameters and optimizer state (FSDP) across devices",
  "mesh.tensor": "tensor-parallel ways (heads and MLP split across devices)",
  "mesh.population": "a vmapped population (PBT) only: groups of members, one per slice of "
                     "devices, each member over data/fsdp/tensor within its slice; -1 = as many "
                     "as divide the members and the devices, 1 = every member on every device",
}


# --------------------------------------------------------------------------- comments from source


def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """Line -> (comment text, whether the comment is the whole line)."""
  out = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      whole = tok.line[: tok.start[1]].strip() == ""
      out[tok.start[0]] = (tok.string.lstrip("#").strip(), whole)
  return out


def _is_heading(comment: str) -> bool:
  """'Column mapping.' or 'SFT.' titles a group of keys; it does not describe the next one."""
  return comment.endswith(".") and len(comment.split()) <= 3


def _dotted(node: ast.expr, root: str) -> str | None:
  """`c.a.b` -> 'a.b' when the chain starts at the name `root`."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name) and node.id == root and parts:
    return ".".join(reversed(parts))
  return None


def _imports(module) -> dict[str, str]:
  """Local names -> module names, from the module's imports."""
  names = {}
  for node in ast.walk(ast.parse(inspect.getsource(module))):
    if isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    elif isinstance(node, ast.Import):
      for alias in node.names:
        names[alias.asname or alias.name] = alias.name
  return names


def documented_keys(func, prefix: str = "") -> dict[str, str]:
  """{'section.key': comment} for the ConfigDict that `func` builds, following sub-builders."""
  source = textwrap.dedent(inspect.getsource(func))
  tree = ast.parse(source)
  (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
  root = next((n.targets[0].id for n in ast.walk(fn) if isinstance(n, ast.Assign)
               and isinstance(n.targets[0], ast.Name)), "c")
  comments = _comments(source)
  module = sys.modules[func.__module__]
  imports = _imports(module)
  docs: dict[str, str] = {}
  assigns = [n for n in ast.walk(fn) if isinstance(n, ast.Assign) and len(n.targets) == 1]
  for node in sorted(assigns, key=lambda n: n.lineno):  # source order
    key = _dotted(node.targets[0], root)
    if key is None:
      continue
    text = []
    line = node.lineno - 1
    while line in comments and comments[line][1]:
      if not _is_heading(comments[line][0]):
        text.insert(0, comments[line][0])
      line -= 1
    for line in (node.lineno, node.end_lineno):
      if line in comments and not comments[line][1] and comments[line][0] not in text:
        text.append(comments[line][0])
    docs[prefix + key] = " ".join(text)
    call = node.value
    if isinstance(call, ast.Call) and not call.args and isinstance(call.func, ast.Attribute) \
        and isinstance(call.func.value, ast.Name) and call.func.value.id in imports:
      target = importlib.import_module(imports[call.func.value.id])
      sub = getattr(target, call.func.attr, None)
      if inspect.isfunction(sub):
        docs.update(documented_keys(sub, f"{prefix}{key}."))
  return docs


# --------------------------------------------------------------------------------- the document


def _flatten(c: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, object]]:
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _value(v) -> str:
  from jaxtune.data import assets

  text = repr(v) if isinstance(v, str) else str(v)
  # Recipes that write derived files keep them in the cache, whose path differs per machine.
  text = text.replace(str(assets.cache_dir()), "<assets.cache_dir()>")
  return "`" + text.replace("|", "\\|") + "`"


@contextlib.contextmanager
def _placeholder_assets():
  """Recipes name asset paths of this machine; show the call that finds them instead."""
  from jaxtune.data import assets

  saved = {}
  for name in ("minilm_dir", "mpnet_dir", "smollm2_gguf", "chitchat_json", "vader_dir",
               "rotten_tomatoes_txt"):
    saved[name] = getattr(assets, name)
    setattr(assets, name, lambda name=name: f"<assets.{name}()>")
  try:
    yield
  finally:
    for name, fn in saved.items():
      setattr(assets, name, fn)


def _diff(base: dict, new: dict) -> list[tuple[str, object]]:
  return [(k, v) for k, v in new.items() if k not in base or base[k] != v]


def render() -> str:
  from jaxtune import config as jt_config

  defaults = jt_config.default()
  docs = documented_keys(jt_config.default)
  unordered = dict(_flatten(defaults))
  # Source order (as the defaults are written), then keys set without a line of their own.
  flat = {k: unordered[k] for k in docs if k in unordered}
  flat.update(unordered)
  lines = [
    "# Configuration reference",
    "",
    f"Generated from the code by `{COMMAND}`; do not edit by hand "
    "(tests/docs/config_reference_test.py fails when it is stale).",
    "",
    "Every run starts from `jaxtune.config.default()`; a recipe in `configs/` changes what it "
    "needs, and any key can be overridden on the command line: "
    "`jaxtune train --config=configs/tiny.py --workdir=DIR --config.optim.learning_rate=1e-3`. "
    "A value is read as the key's type (`true`/`false` for booleans, as does "
    "`--noconfig.train.progress`). Unknown keys are errors naming the closest keys. A value of "
    "`''`, `0` or `-1` usually means \"off\" or "
    "\"decided from the data\", as the key's description says.",
    "",
  ]
  sections: dict[str, list[str]] = {}
  for key in flat:
    sections.setdefault(key.split(".")[0] if "." in key else "", []).append(key)
  lines += ["Sections: " + ", ".join(f"[`{s}`](#{s})" for s in sections if s) + ", "
            "[recipes](#recipes).", ""]
  for section, keys in sections.items():
    lines += [f"## {section}" if section else "## top level", ""]
    if section and docs.get(section):
      lines += [docs[section], ""]
    lines += ["| key | default | meaning |", "|---|---|---|"]
    for key in keys:
      meaning = (docs.get(key) or IMPLICIT.get(key, "")).replace("|", "\\|")
      lines.append(f"| `{key}` | {_value(flat[key])} | {meaning} |")
    lines.append("")

  lines += ["## Recipes", "",
            "What each recipe in `configs/` changes from the defaults above (`<assets.NAME()>` "
            "is the local path that `jaxtune.data.assets` fetched).", ""]
  with _placeholder_assets():
    for path in sorted((REPO / "configs").glob("*.py")):
      recipe = recipes.module(path)
      doc = (recipe.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
      base = dict(_flatten(recipe.get_config(None)))
      lines += [f"### `configs/{path.name}`", "", doc, ""]
      lines += [f"- `{k}` = {_value(v)}" for k, v in _diff(flat, base)]
      for variant in VARIANTS.get(path.stem, ()):
        changed = _diff(base, dict(_flatten(recipe.get_config(variant))))
        lines += ["", f"`configs/{path.name}:{variant}` changes, on top of that:", ""]
        lines += [f"- `{k}` = {_value(v)}" for k, v in changed]
      lines.append("")
  return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.parse_args(argv)
  sys.stdout.write(render())


if __name__ == "__main__":
  main()
