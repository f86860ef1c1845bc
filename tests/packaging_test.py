"""Every third-party module jaxtune imports is declared in pyproject.toml.

A module imported at module level must be a runtime dependency (a base install imports it); one
imported inside a function (an optional feature: GGUF, legacy torch checkpoints, MLflow, W&B) may
come from an extra instead. An undeclared import works on a developer's machine, where something
else happened to install it, and breaks a user's base install (jinja2 did, in the quickstart).
"""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
  """The normalised distribution name of a requirement string ('Jinja2>=3' -> 'jinja2')."""
  return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _imports() -> dict[str, dict[str, list[str]]]:
  """{top-level module: {"module": [files importing it at module level], "lazy": [...]}}."""
  found: dict[str, dict[str, list[str]]] = {}
  for path in sorted((REPO / "jaxtune").rglob("*.py")):
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body}
    top_level |= {id(n) for stmt in tree.body if isinstance(stmt, ast.Try | ast.If)
                  for n in ast.walk(stmt)}
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
      else:
        continue
      kind = "module" if id(node) in top_level else "lazy"
      for name in names:
        root = name.split(".")[0]
        if root == "jaxtune" or root in sys.stdlib_module_names:
          continue
        found.setdefault(root, {"module": [], "lazy": []})[kind].append(
          str(path.relative_to(REPO)))
  return found


def test_every_import_is_declared():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  runtime = {_name(r) for r in project["dependencies"]}
  extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
  dists = importlib.metadata.packages_distributions()
  problems = []
  for module, where in sorted(_imports().items()):
    names = {_name(d) for d in dists.get(module, [module])}
    if where["module"] and not names & runtime:
      problems.append(f"{module} ({', '.join(sorted(names))}) imported at module level in "
                      f"{where['module'][0]} but not in [project] dependencies")
    elif not names & (runtime | extras):
      problems.append(f"{module} ({', '.join(sorted(names))}) imported in {where['lazy'][0]} "
                      f"but in no dependency or extra")
  assert not problems, "\n".join(problems)


def test_the_check_sees_module_level_and_lazy_imports():
  found = _imports()
  assert "jinja2" in found and found["jinja2"]["module"]  # data/templates.py, at module level
  assert "torch" in found and not found["torch"]["module"]  # legacy checkpoints only
