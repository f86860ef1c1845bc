"""Python recipe files loaded by path: the one loader for recipes (`configs/x.py[:arg]`), search
files and recipes built on another recipe (`sentiment_mpnet` on `sentiment_minilm`).

The command line's `--config` goes through ml_collections' config flags, which also apply
`--config.key=value` overrides; everything else that reads a recipe by its path comes here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import ml_collections


def module(path: str | Path) -> ModuleType:
  """The python file at `path`, executed as a fresh module (named after the file)."""
  path = Path(path)
  spec = importlib.util.spec_from_file_location(f"_jaxtune_recipe_{path.stem}", path)
  if spec is None or not path.is_file():
    raise FileNotFoundError(f"{path}: no such python file")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def load(spec: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the recipe `spec` ('configs/x.py' or 'configs/x.py:variant'; an
  explicit `arg` wins over the spec's)."""
  file, sep, spec_arg = str(spec).rpartition(":")
  if not sep or not file.endswith(".py"):  # no variant (or a colon elsewhere in the path)
    file, spec_arg = str(spec), ""
  return module(file).get_config((arg if arg is not None else spec_arg) or None)


def beside(file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of recipe `name` in the folder of `file` (a recipe's own `__file__`), for a
  recipe that starts from another one."""
  return load(Path(file).with_name(f"{name}.py"), arg or "")
