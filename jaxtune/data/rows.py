"""A row and the bad-row policy every reader shares.

A `Row` is a dict of columns plus the file and 1-based row it came from; `BadRows` raises on a
bad row (data.on_bad_row='error') or records it for workdir/skipped_rows.jsonl ('skip').
`jaxtune.data.readers` and `jaxtune.data.builtin` both make rows, so they live here, below both.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
from pathlib import Path

from etils import epath

from jaxtune.errors import DataError

log = logging.getLogger("jaxtune.data.readers")  # the logger these messages always had

_CONTENT_CHARS = 500  # raw content kept per skipped row: enough to find it, not the whole file


@dataclasses.dataclass
class Row:
  fields: dict
  file: str
  row: int  # 1-based line (jsonl, csv, tsv, txt) or item (json, parquet, hub) number

  def origin(self) -> dict:
    return {"file": self.file, "row": self.row}


class BadRows:
  """Raises on a bad row (policy 'error') or records it (policy 'skip')."""

  def __init__(self, policy: str = "error"):
    if policy not in ("error", "skip"):
      raise ValueError(f"config: data.on_bad_row={policy!r}: expected 'error' or 'skip'")
    self.policy = policy
    self.skipped: list[dict] = []
    self.by_reason: collections.Counter = collections.Counter()

  def __call__(self, file: str, row: int, reason: str, content=None) -> None:
    if self.policy == "error":
      raise DataError(f"{file}, row {row}: {reason} (data.on_bad_row='skip' skips such rows)")
    self.skipped.append({"file": str(file), "row": row, "reason": reason, "content": _truncate(content)})
    self.by_reason[reason_kind(reason)] += 1

  def __len__(self) -> int:
    return len(self.skipped)

  def write(self, workdir: str | Path, name: str = "skipped_rows.jsonl") -> Path | None:
    """workdir/<name>, rewritten on every build so it never holds a stale run's rows."""
    if self.policy != "skip":
      return None
    path = epath.Path(workdir) / name  # also gs:// workdirs
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
      for r in self.skipped:
        f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    if self.skipped:
      log.warning("skipped %d bad rows (%s); see %s", len(self.skipped),
                  ", ".join(f"{k}: {v}" for k, v in self.by_reason.most_common()), path)
    return path


def reason_kind(reason: str) -> str:
  """A reason without its specifics (the text after ':', numbers), to count alike rows together."""
  return re.sub(r"\d+", "N", reason.split(":")[0])


def _truncate(content) -> str | None:
  if content is None:
    return None
  if isinstance(content, bytes):
    content = content.decode("utf-8", errors="replace")
  elif not isinstance(content, str):
    content = json.dumps(content, ensure_ascii=False, default=str)
  return content if len(content) <= _CONTENT_CHARS else content[:_CONTENT_CHARS] + "..."
