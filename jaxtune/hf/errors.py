"""Errors raised for bad checkpoints and configs; messages name the file, tensor or attribute."""

import json
from pathlib import Path

from jaxtune.errors import CheckpointError

__all__ = ["CheckpointError", "ModelNotFoundError", "UnsupportedConfigError", "read_json"]


class UnsupportedConfigError(CheckpointError):
  """An HF config attribute (or value) that jaxtune does not implement."""


class ModelNotFoundError(CheckpointError, FileNotFoundError):
  """A model source that is neither a local path nor a hub id that could be downloaded."""


def read_json(path: Path, *, missing: str):
  """A checkpoint's JSON file; a missing or malformed one is a CheckpointError naming it."""
  if not path.exists():
    raise CheckpointError(f"{path}: {missing}")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e})") from e
