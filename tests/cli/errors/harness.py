"""The battery's harness: run `jaxtune ...` as a user would and check how it fails.

`run(...)` starts the real command in a subprocess (the CLI's error handling is what is under
test) and `expect_error(...)` asserts the contract of issue 16: exit code 2, one line
`jaxtune <subcommand>: error: ...` on stderr with the words that must be there, no traceback,
and, through `Snapshot`, that no file outside the command's own place changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


@dataclasses.dataclass
class Result:
  args: tuple[str, ...]
  returncode: int
  stdout: str
  stderr: str

  def __str__(self) -> str:
    return (f"jaxtune {' '.join(self.args)}\nexit {self.returncode}\n--- stdout\n{self.stdout[-3000:]}"
            f"\n--- stderr\n{self.stderr[-5000:]}")


def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
        input: str | None = None) -> Result:
  """`jaxtune *args` in a fresh process on the CPU (one device: these runs are about errors)."""
  full_env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
              "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
  full_env.pop("JAXTUNE_DEBUG", None)
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, "-m", "jaxtune.main", *args], capture_output=True,
                        text=True, env=full_env, cwd=cwd or REPO, timeout=timeout, input=input)
  return Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)


def expect_error(result: Result, subcommand: str, *words: str, code: int = 2) -> str:
  """Assert a clean failure and return its error line. `words` must all appear in that line
  (case-insensitive)."""
  assert result.returncode == code, str(result)
  assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, str(result)
  prefix = f"jaxtune {subcommand}: error: "
  lines = [ln for ln in result.stderr.splitlines() if ln.startswith(prefix)]
  assert len(lines) == 1, f"expected one line starting {prefix!r}\n{result}"
  line = lines[0]
  for w in words:
    assert w.lower() in line.lower(), f"{w!r} not in the error line {line!r}\n{result}"
  return line


def _digest(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


class Snapshot:
  """Hashes of every file under some roots; `assert_unchanged(except_under=...)` after a
  command proves it changed nothing else (no file added, removed or rewritten)."""

  def __init__(self, *roots: Path):
    self.roots = [Path(r) for r in roots]
    self.before = self._take()

  def _take(self) -> dict[str, str]:
    out = {}
    for root in self.roots:
      if root.is_file():
        out[str(root)] = _digest(root)
      elif root.exists():
        for p in sorted(root.rglob("*")):
          if p.is_file():
            out[str(p)] = _digest(p)
    return out

  def changes(self, except_under: tuple[Path, ...] = ()) -> list[str]:
    after = self._take()
    allowed = tuple(str(Path(p)) for p in except_under)
    changed = []
    for path in sorted(set(self.before) | set(after)):
      if self.before.get(path) != after.get(path) and not path.startswith(allowed):
        changed.append(path)
    return changed

  def assert_unchanged(self, except_under: tuple[Path, ...] = ()) -> None:
    changed = self.changes(except_under)
    assert not changed, f"files changed: {changed}"
