"""GGUF export (`jaxtune.hf.gguf_write`): what jaxtune writes, transformers' GGUF loader reads.

Tiny random transformers models of each architecture the reader reads are loaded into jaxtune
and written as GGUF files with a byte-level BPE tokenizer built here (Qwen2's split, special
and user-defined tokens, a chat template). transformers' own GGUF loader
(`from_pretrained(dir, gguf_file=...)`) must compute jaxtune's logits from the file, and its
GGUF tokenizer must encode as the run's tokenizer does. Measured on these models (max |logit|
~3), the file's logits against the model's float32 ones: f32 <= 5e-6, f16 <= 5e-3,
bf16 <= 3.6e-2, q8_0 <= 0.13 (gemma3; 0.05-0.07 elsewhere); transformers against jaxtune's
own read of the same file: <= 5e-6 for every type.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")

import jaxtune.hf  # noqa: E402
from jaxtune import lora  # noqa: E402
from jaxtune.errors import ConfigError  # noqa: E402
from jaxtune.hf import gguf_tokenizer, gguf_write  # noqa: E402
from jaxtune.hf.errors import UnsupportedConfigError  # noqa: E402
from tests.hf.gguf_arch_test import _hf_model  # noqa: E402
from tests.hf.gguf_test import MERGES, SPECIAL, _tokens  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ["the world in 2024, 12345 items", "Héllo\n\n  wörld's 😀 <|im_start|>x<think>in",
         "it's I'LL  \t9z the"]
# Max |logits(file) - logits(model)| / max |logits| allowed per type (measured: see above).
TOLERANCE = {"f32": 1e-5, "f16": 3e-3, "bf16": 2e-2, "q8_0": 6e-2}
GENERAL = gguf_write.General(name="tiny", base_model="tiny base", base_repo="org/tiny",
                             license="apache-2.0")


def run_tokenizer():
  """A Qwen2-style byte-level BPE tokenizer, as a run loads it from an HF directory."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

  vocab = {t: i for i, t in enumerate(_tokens()[:-1])}  # <think> comes as an added token
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in MERGES]))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(gguf_tokenizer._QWEN2_SPLIT), behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
  tok.add_tokens([AddedToken("<think>", normalized=False)])
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token=SPECIAL[1], eos_token=SPECIAL[2], pad_token=SPECIAL[0],
    chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """arch -> (its HF directory, the jaxtune model loaded from it)."""
  out = {}
  for arch in ("llama", "qwen2", "qwen3", "gemma2", "gemma3"):
    d = tmp_path_factory.mktemp(arch)
    _hf_model(arch).save_pretrained(d)
    out[arch] = (d, jaxtune.hf.load(d))
  return out


def _ids():
  return np.random.default_rng(0).integers(0, len(_tokens()), (2, 12))


def _export(model, tmp_path, quant, tokenizer=None):
  (tmp_path / "gguf").mkdir(exist_ok=True)  # alone in its folder: nothing else for transformers to read
  path = tmp_path / "gguf" / f"{quant}.gguf"
  gguf_write.write(model, path, tokenizer or run_tokenizer(), quant=quant, general=GENERAL)
  return path


def _transformers_logits(path, ids):
  model = transformers.AutoModelForCausalLM.from_pretrained(
    path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.numpy()


# Every architecture and every type, each at least once (the tight file-vs-file check makes a
# quantized case also a layout check).
CASES = [("llama", "f32"), ("qwen2", "f32"), ("qwen3", "f16"), ("qwen2", "bf16"), ("llama", "q8_0"),
         ("gemma3", "q8_0"), ("gemma2", "f16")]


@pytest.mark.parametrize("arch,quant", CASES)
def test_transformers_reads_the_export_with_jaxtunes_logits(models, tmp_path, arch, quant):
  _, model = models[arch]
  ids = _ids()
  want = np.asarray(model(ids))
  path = _export(model, tmp_path, quant)
  theirs = _transformers_logits(path, ids)
  ours_back = np.asarray(jaxtune.hf.load(path)(ids))  # jaxtune reads its own export back
  scale = np.abs(want).max()
  # Same weights (the file's) on both sides: float32 agreement, whatever the type.
  np.testing.assert_allclose(theirs, ours_back, atol=1e-5 * scale, rtol=0)
  # Against the model itself: the type's rounding only.
  err = np.abs(theirs - want).max() / scale
  assert err <= TOLERANCE[quant], (arch, quant, err)
  if quant != "f32":  # the type was applied (a float32 file would match to 1e-6)
    assert err > 1e-5, err
  types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
  want_2d = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[quant]
  assert types["blk.0.attn_q.weight"] == want_2d and types["blk.0.attn_norm.weight"] == "F32"


def test_tokenizer_and_metadata_as_llama_cpp_names_them(models, tmp_path):
  _, model = models["qwen3"]
  tok = run_tokenizer()
  path = _export(model, tmp_path, "f16", tok)
  theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  ours = gguf_tokenizer.load_tokenizer(path)
  for text in TEXTS:
    want = tok(text)["input_ids"]
    assert theirs(text)["input_ids"] == want and ours(text)["input_ids"] == want, text
  assert theirs.tokenize("12345") == ["1", "2", "3", "4", "5"]  # Qwen2's digit split
  chat = [{"role": "user", "content": "hi"}]
  want = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
  assert theirs.chat_template == TEMPLATE
  assert theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == want
  meta = jaxtune.hf.gguf.metadata(path)
  assert meta["tokenizer.ggml.pre"] == "qwen2" and meta["tokenizer.ggml.model"] == "gpt2"
  assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
          meta["tokenizer.ggml.padding_token_id"]) == (1, 2, 0)
  assert meta["tokenizer.ggml.add_bos_token"] is False
  assert meta["general.base_model.0.repo_url"] == "https://huggingface.co/org/tiny"
  assert (meta["general.name"], meta["general.license"]) == ("tiny", "apache-2.0")
  assert meta["qwen3.context_length"] == 128 and meta["qwen3.attention.head_count_kv"] == 2
  assert meta["qwen3.attention.key_length"] == 128 and meta["qwen3.rope.freq_base"] == 50000.0
  reader = gguf.GGUFReader(path)
  types = reader.fields["tokenizer.ggml.token_type"]
  by_name = dict(zip(jaxtune.hf.gguf.field_value(reader.fields["tokenizer.ggml.tokens"]),
                     (int(types.parts[i][0]) for i in types.data)))
  assert (by_name["<|im_start|>"], by_name["<think>"], by_name["Ġthe"]) == (3, 4, 1)


def gemma_tokenizer():
  """A tiny Gemma-style SentencePiece tokenizer (BPE with byte fallback, `▁` for spaces), built
  by transformers' GemmaTokenizer as transformers builds one from a Gemma GGUF file."""
  from transformers.tokenization_utils_base import generate_merges

  pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "i", "s", "▁▁", "▁▁▁", "he", "ll", "▁h",
            "▁w", "or", "ld", "▁he", "llo", "▁hello", "▁wor", "▁world", "▁t", "▁the", "▁i", "is",
            "▁is"]
  # ASCII bytes only: the tiny model has 270 embedding rows; the rest are padding.
  tokens = (["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "\n"]
            + [f"<0x{b:02X}>" for b in range(128)] + pieces)
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = generate_merges(vocab, {t: -i for i, t in enumerate(tokens)})
  tok = transformers.GemmaTokenizer(vocab=vocab, merges=merges, chat_template=TEMPLATE,
                                    add_bos_token=True)
  tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
  tok.add_tokens(["\n"])
  return tok


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gemma_sentencepiece_tokenizer(models, tmp_path, arch):
  """Gemma's SentencePiece vocabulary as llama.cpp's 'llama' model: types, scores in merge
  order, runs of spaces as spaces; transformers' GGUF tokenizer encodes as the run's does."""
  _, model = models[arch]
  tok = gemma_tokenizer()
  path = _export(model, tmp_path, "q8_0", tok)
  theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  ours = gguf_tokenizer.load_tokenizer(path)
  for text in ["hello world", "the   world is\nhello<start_of_turn>x", "  hi ZZ the\n\nis"]:
    want = tok(text)["input_ids"]
    assert theirs(text)["input_ids"] == want and ours(text)["input_ids"] == want, text
  assert tok("hello")["input_ids"][0] == 2  # <bos>, which the flag below makes llama.cpp add
  reader = gguf.GGUFReader(path)
  value = lambda k: jaxtune.hf.gguf.field_value(reader.fields[k])  # noqa: E731
  assert (value("tokenizer.ggml.model"), value("tokenizer.ggml.add_bos_token")) == ("llama", True)
  tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
  scores = value("tokenizer.ggml.scores")
  kind = dict(zip(tokens, types))
  assert [kind[t] for t in ("<bos>", "<start_of_turn>", "\n", "<0x41>", "▁hello", "  ")] == [
    3, 3, 4, 6, 1, 4]
  normal = [s for s, k in zip(scores, types) if k == 1]
  assert normal == sorted(normal, reverse=True) and len(set(normal)) == len(normal)
  assert tokens[-1] == "[PAD269]" and types[-1] == 5


def test_lora_is_merged(models, tmp_path):
  """The file holds the fine-tuned weights (adapters folded in), not the base's."""
  d, _ = models["llama"]
  model = jaxtune.hf.load(d)
  ids = _ids()
  base = np.asarray(model(ids))
  cfg = lora.default_config()
  cfg.rank, cfg.alpha = 4, 8.0
  lora.apply(model, cfg)
  rng = np.random.default_rng(1)
  for _, m in lora.lora_modules(model):
    b = m.lora_b.get_value()
    m.lora_b.set_value(jnp.asarray(0.3 * rng.standard_normal(b.shape), b.dtype))
  tuned = np.asarray(model(ids))
  assert np.abs(tuned - base).max() > 0.1
  theirs = _transformers_logits(_export(model, tmp_path, "f32"), ids)
  np.testing.assert_allclose(theirs, tuned, atol=1e-5 * np.abs(tuned).max(), rtol=0)


def test_what_gguf_cannot_say_is_refused(models, tmp_path):
  d, model = models["gemma3"]
  with pytest.raises(ConfigError, match=re.escape("--quant='q4_k'")):
    gguf_write.write(model, tmp_path / "x.gguf", run_tokenizer(), quant="q4_k", general=GENERAL)
  # A layer pattern other than every 6th global: the file would read back as another network.
  other = jaxtune.hf.load(d)
  other.config = dataclasses.replace(other.config, layer_types=("full_attention",) * 7)
  with pytest.raises(UnsupportedConfigError, match="layer_types="):
    gguf_write.write(other, tmp_path / "y.gguf", run_tokenizer(), quant="f16", general=GENERAL)
  # An architecture the reader does not read (Mistral) is named.
  mistral_dir = tmp_path / "mistral"
  cfg = transformers.MistralConfig(vocab_size=len(_tokens()), hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
  transformers.MistralForCausalLM(cfg).save_pretrained(mistral_dir)
  with pytest.raises(UnsupportedConfigError, match="model_type='mistral' cannot be written as GGUF"):
    gguf_write.write(jaxtune.hf.load(mistral_dir), tmp_path / "z.gguf", run_tokenizer(),
                     quant="f16", general=GENERAL)
  assert not any(tmp_path.glob("*.gguf"))


def test_export_checks_refuse_classifiers_quants_and_existing_files(tmp_path):
  from jaxtune import config as jt_config
  from jaxtune import export
  from jaxtune.errors import OutputError

  c = jt_config.default()
  c.model.task = "seq_cls"
  with pytest.raises(ConfigError, match="seq_cls model.*causal language models.*--format=hf"):
    export.check_gguf(c, str(tmp_path / "m.gguf"), "f16")
  c.model.task = "causal_lm"
  with pytest.raises(ConfigError, match="the run has no tokenizer"):  # a preset model
    export.check_gguf(c, str(tmp_path / "m.gguf"), "f16")
  c.model.source = "org/tiny"
  with pytest.raises(ConfigError, match="--quant='int4': expected one of f32, f16, bf16, q8_0"):
    export.check_gguf(c, str(tmp_path / "m.gguf"), "int4")
  with pytest.raises(ConfigError, match="ending in .gguf"):
    export.check_gguf(c, str(tmp_path / "m"), "f16")
  (tmp_path / "m.gguf").write_bytes(b"mine")
  with pytest.raises(OutputError, match=r"never overwrites it; choose another --out \(e\.g\. .*m-2\.gguf"):
    export.check_gguf(c, str(tmp_path / "m.gguf"), "f16")
  assert (tmp_path / "m.gguf").read_bytes() == b"mine"
  assert os.listdir(tmp_path) == ["m.gguf"]
