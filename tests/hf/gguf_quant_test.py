"""Every ggml tensor type jaxtune reads, checked against the gguf package's own dequantization.

A tiny qwen2 model (rows of 256, the k-quant super-block) is written with all its matrices in
one type: quantized by `gguf.quants.quantize` where the package can, else random blocks of the
type's layout (tests/hf/gguf_files.py). jaxtune's tensors must equal `gguf.quants.dequantize` of
the bytes written, bit for bit, under their HF names and shapes. Types jaxtune does not read
are errors naming the tensor and the type. A file mixing the k-quants as llama.cpp's Q4_K_M
does gives the logits transformers' own GGUF loader gives.
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxtune.hf import gguf as jgguf  # noqa: E402
from jaxtune.hf.errors import CheckpointError  # noqa: E402
from tests.hf.gguf_files import Q, write_from_hf  # noqa: E402
from tests.hf.gguf_test import _tokens  # noqa: E402

# The types jaxtune reads and llama.cpp's usual ones among them (the issue's list); gguf must be
# able to quantize the first group itself, the k-quants are laid out by hand.
QUANTIZABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


@pytest.fixture(scope="module")
def model():
  cfg = transformers.Qwen2Config(
    vocab_size=len(_tokens()), hidden_size=256, intermediate_size=256, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  torch.manual_seed(0)
  return transformers.Qwen2ForCausalLM(cfg).eval()


def _hf_names(model):
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, model.config.num_hidden_layers)
  out = {}
  for hf_name in model.state_dict():
    base, suffix = hf_name.rsplit(".", 1)
    out[f"{names.get_name(base)}.{suffix}"] = hf_name
  return out


def test_the_issues_types_are_read():
  assert set(QUANTIZABLE + K_QUANTS) <= set(jgguf.DEQUANTIZED)
  for name in QUANTIZABLE[2:]:  # so the test below quantizes them rather than using random bytes
    gguf.quants.quantize(np.zeros((1, 256), np.float32), Q[name])


def test_reads_exactly_what_gguf_dequantizes():
  """jaxtune's list is the gguf package's: a type the package adds fails here until it is tested."""
  can = set()
  for t in Q:
    block, size = gguf.GGML_QUANT_SIZES[t]
    raw = {Q.F32: np.zeros(block, np.float32), Q.F16: np.zeros(block, np.float16)}.get(t)
    try:
      gguf.quants.dequantize(np.zeros((1, size), np.uint8) if raw is None else raw, t)
    except NotImplementedError:
      continue
    can.add(t.name)
  assert can == set(jgguf.DEQUANTIZED)


@pytest.mark.parametrize("qtype", jgguf.DEQUANTIZED)
def test_dequantizes_as_gguf_does(tmp_path, model, qtype):
  path = tmp_path / f"{qtype}.gguf"
  written = write_from_hf(model, path, "qwen2", qtype_of=lambda name, arr: Q[qtype], seed=1)
  cfg, src = jgguf.open_gguf(path)
  to_hf = _hf_names(model)
  assert src.names() == set(to_hf.values())
  for gname, (t, data) in written.items():
    name = to_hf[gname]
    want = gguf.quants.dequantize(data, t)
    assert want.shape == tuple(model.state_dict()[name].shape)
    assert src.shape(name) == want.shape
    got = src.get(name)
    assert got.dtype == np.float32 and np.isfinite(got).all(), name
    np.testing.assert_array_equal(got, want, err_msg=f"{gname} as {t.name}")
    if t.name in QUANTIZABLE[3:]:  # and they are the weights, to the type's precision
      orig = model.state_dict()[name].numpy()
      assert np.abs(got - orig).max() < 0.1 * np.abs(orig).max(), name
  assert written["blk.0.ffn_down.weight"][0] == Q[qtype]


@pytest.mark.parametrize("qtype", sorted(t.name for t in Q if t.name not in jgguf.DEQUANTIZED))
def test_other_types_are_errors_naming_tensor_and_type(tmp_path, model, qtype):
  t = Q[qtype]

  def pick(name, arr):
    return t if name == "blk.0.ffn_down.weight" else Q.F32

  numpy_type = {Q.I8: np.int8, Q.I16: np.int16, Q.I32: np.int32, Q.I64: np.int64, Q.F64: np.float64}
  if t in numpy_type:  # GGUFWriter takes these as plain numpy arrays
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    written = write_from_hf(model, tmp_path / "f32.gguf", "qwen2")
    reader = gguf.GGUFReader(tmp_path / "f32.gguf")
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv",
                "attention.layer_norm_rms_epsilon", "rope.freq_base"):
      field = reader.fields[f"qwen2.{key}"]
      w.add_key_value(f"qwen2.{key}", field.parts[field.data[0]][0].item(), field.types[0])
    for gname, (_, data) in written.items():
      arr = data.astype(numpy_type[t]) if gname == "blk.0.ffn_down.weight" else data
      w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
  else:  # random bytes of the type's block size, as for the types gguf cannot quantize
    path = tmp_path / "w.gguf"
    write_from_hf(model, path, "qwen2", qtype_of=pick)
  with pytest.raises(CheckpointError, match=rf"w\.gguf: tensor 'blk\.0\.ffn_down\.weight' .*ggml type {qtype}\b"):
    jgguf.open_gguf(path)


def test_unknown_type_id_names_the_tensor(tmp_path, model):
  """A type id newer than the gguf package (or a corrupt one) is named with its tensor."""
  path = tmp_path / "new.gguf"
  write_from_hf(model, path, "qwen2")
  data = bytearray(path.read_bytes())
  name = b"blk.0.ffn_up.weight"
  at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
  n_dims = int.from_bytes(data[at : at + 4], "little")
  at += 4 + 8 * n_dims
  assert int.from_bytes(data[at : at + 4], "little") == Q.F32
  data[at : at + 4] = (99).to_bytes(4, "little")
  path.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match=r"new\.gguf: tensor 'blk\.0\.ffn_up\.weight' has unknown ggml type id 99"):
    jgguf.open_gguf(path)


def test_k_quant_file_matches_transformers(tmp_path, model):
  """A Q4_K_M-like mix of k-quants (and Q8_0 embeddings): jaxtune's logits equal transformers'
  own GGUF load of the same file."""
  pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")
  import jaxtune.hf

  mix = {"attn_q": Q.Q4_K, "attn_k": Q.Q4_K, "attn_v": Q.Q6_K, "attn_output": Q.Q5_K,
         "ffn_gate": Q.Q3_K, "ffn_up": Q.Q2_K, "ffn_down": Q.Q6_K, "token_embd": Q.Q8_0, "output": Q.Q5_K}
  path = tmp_path / "kq.gguf"
  written = write_from_hf(model, path, "qwen2", qtype_of=lambda name, arr: mix[name.split(".")[-2]])
  assert {t.name for t, _ in written.values()} == {"F32", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path), gguf_file="kq.gguf", dtype=torch.float32).eval()
  ids = np.random.default_rng(0).integers(0, len(_tokens()), (2, 10))
  with torch.no_grad():
    want = theirs(torch.tensor(ids)).logits.numpy()
  got = np.asarray(jaxtune.hf.load(path)(ids))
  assert np.isfinite(want).all()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_big_tensors_are_dequantized_in_rows_and_the_parse_is_dropped_after_loading(
    tmp_path, model, monkeypatch):
  """`get` dequantizes a tensor DEQUANTIZE_ROWS rows at a time into one float32 array: bit for
  bit gguf's whole-tensor result, with numpy's peak (tracemalloc) near that array's size, where
  gguf's one call peaks at over twice it (2.2x here; Gemma 3 270M's [262144, 640] Q6_K table
  raised the loading RSS by 1.4 GB). `hf.load` drops the cached parse once the weights are in."""
  import tracemalloc

  from jaxtune import hf

  path = tmp_path / "q6k.gguf"
  written = write_from_hf(model, path, "qwen2", qtype_of=lambda name, arr: Q.Q6_K, seed=1)
  t, data = written["token_embd.weight"]
  want = gguf.quants.dequantize(data, t)
  _, src = jgguf.open_gguf(path)

  def peak(fn):
    tracemalloc.start()
    try:
      out = fn()
      return out, tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()

  _, whole = peak(lambda: gguf.quants.dequantize(src._tensors["model.embed_tokens.weight"].data, t))
  monkeypatch.setattr(jgguf, "DEQUANTIZE_ROWS", 16)
  got, rows = peak(lambda: src.get("model.embed_tokens.weight"))
  np.testing.assert_array_equal(got, want)
  assert want.shape[0] > 16 * 4 and whole > 2 * want.nbytes, (whole, want.nbytes)
  assert rows < 1.5 * want.nbytes, (rows, want.nbytes)  # the result plus one block of rows

  jgguf.forget_readers()
  hf.load(path)
  assert jgguf._cached_reader.cache_info().currsize == 0
