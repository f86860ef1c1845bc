"""No import circles in jaxtune/, counting the imports inside functions (issue 18).

A lazy (function-level) import hides a circle from Python but not from the reader: the modules
still depend on each other, so neither can be understood, tested or moved alone. The graph is
built from the source with `ast`, so nothing is imported.

An edge goes from a module to each jaxtune module it names: `import jaxtune.a.b` and
`from jaxtune.a import b` (when `b` is a module) name `jaxtune.a.b`; `from jaxtune.a import f`
(a function) names `jaxtune.a`. Importing a submodule also runs its package's `__init__`, but
that is not counted as an edge: a package that re-exports its own submodules is not a circle
anyone has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jaxtune"


def _module_name(path: Path, package: Path) -> str:
  parts = list(path.relative_to(package.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
  """{module: jaxtune modules it imports anywhere in its source}."""
  files = {_module_name(p, package): p for p in package.rglob("*.py")}
  graph: dict[str, set[str]] = {name: set() for name in files}
  for name, path in files.items():
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
      targets: list[str] = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's own package upwards
          here = name.split(".") if is_package else name.split(".")[:-1]
          here = here[:len(here) - node.level + 1]
          base = ".".join(here + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
      for t in targets:
        while t and t not in files:  # `import jaxtune.a.b` of a name inside a module
          t = t.rpartition(".")[0]
        if t and t != name:
          graph[name].add(t)
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None when the graph is acyclic."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_find_cycle_reports_a_circle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_counts_imports_inside_functions():
  graph = import_graph()
  # evaluate_file imports the run loader only inside the function.
  assert "jaxtune.finished_run" in graph["jaxtune.cli.eval"]


def test_the_circles_of_the_starting_code_are_found(tmp_path):
  # 1a760f0's train.py / export.py / generate.py in miniature: generate imports export inside a
  # function, export imports train inside one, train imports generate at the top.
  pkg = tmp_path / "jaxtune"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "train.py").write_text("from jaxtune import generate\n")
  (pkg / "export.py").write_text("def load_run():\n  from jaxtune import train\n")
  (pkg / "generate.py").write_text("def load_source():\n  from jaxtune import export\n")
  cycle = find_cycle(import_graph(pkg))
  assert cycle == ["jaxtune.export", "jaxtune.train", "jaxtune.generate", "jaxtune.export"]


def test_jaxtune_has_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import circle in jaxtune/: " + " -> ".join(cycle)
