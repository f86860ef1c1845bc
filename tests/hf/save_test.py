"""hf.save past the shard size: numbered shards plus an index that transformers and we read."""

import json

import numpy as np
import pytest

from jaxtune import hf
from jaxtune.models import presets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_sharded_save_loads_in_transformers_and_back(tmp_path):
  model = presets.init("tiny-llama")
  out = hf.save(model, tmp_path / "out", max_shard_bytes=60_000)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 2 and all((out / s).exists() for s in shards)
  assert not list(out.glob(".shard-*")), "temporary shard files left behind"

  ids = np.random.default_rng(0).integers(0, 257, (2, 12))
  ours = np.asarray(model(ids))
  theirs, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  with torch.no_grad():
    ref = theirs(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  again = hf.load(out)
  np.testing.assert_allclose(np.asarray(again(ids)), ours, atol=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "bool"])
def test_integer_dtype_is_refused_before_writing(tmp_path, dtype):
  from jaxtune import export
  from jaxtune.errors import ConfigError

  model = presets.init("tiny-llama")
  with pytest.raises(ConfigError, match=rf"dtype='{dtype}'"):  # int8 used to write all-zero weights
    hf.save(model, tmp_path / "out", dtype=dtype)
  assert not (tmp_path / "out").exists()
  with pytest.raises(ConfigError, match=rf"--dtype='{dtype}': exported weights must be one of"):
    export.check_dtype(dtype, "--dtype")
  export.check_dtype("bfloat16", "--dtype")
  export.check_dtype("", "export.dtype")
