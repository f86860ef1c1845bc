"""Shared by the HF tests: private copies of a saved checkpoint with edited tensors."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jaxtune.hf import safetensors_io

Edit = Callable[[dict[str, np.ndarray]], object]


def rewrite_safetensors(directory: Path, edit: Edit) -> Path:
  """Read directory/model.safetensors, let `edit` change the {name: array} dict, write it back."""
  f = directory / "model.safetensors"
  src = safetensors_io.SafetensorsFile(f)
  tensors = {k: np.array(src.get(k)) for k in src.header}
  del src  # close the memory map before overwriting the file
  edit(tensors)
  safetensors_io.write_safetensors(f, tensors, metadata={"format": "pt"})
  return f


@pytest.fixture
def edited_copy(tmp_path) -> Callable[[Path, Edit], Path]:
  """edited_copy(checkpoint_dir, edit): a copy of the directory with its tensors edited."""

  def make(directory: Path, edit: Edit) -> Path:
    out = tmp_path / "edited"
    shutil.copytree(directory, out)
    rewrite_safetensors(out, edit)
    return out

  return make
