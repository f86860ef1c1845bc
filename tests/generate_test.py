"""KV-cached generation: cached logits equal the full forward, greedy tokens equal transformers.

Tiny random HF models of each family are written with transformers in the test (float32,
eager attention) and loaded with `jaxtune.hf.load`.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxtune import generate, hf  # noqa: E402

VOCAB, PAD, EOS = 96, 0, 1
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD, bos_token_id=2,
            eos_token_id=EOS, max_position_embeddings=128)
SPECS = {
  "llama": ("llama", {}),
  "mistral": ("mistral", dict(sliding_window=4)),
  "qwen3": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
  "gemma": ("gemma", dict(head_dim=16, hidden_act="gelu_pytorch_tanh")),
  # Gemma 3: a window of 4 under prompts of up to 7 tokens and 10 new ones, so the local
  # layers' cached keys fall out of the window (transformers keeps a sliding cache for them).
  "gemma3": ("gemma3_text", dict(
    head_dim=16, num_hidden_layers=3, sliding_window=4, query_pre_attn_scalar=16,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})),
  "gpt2": ("gpt2", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
}


def _hf_model(name: str):
  model_type, overrides = SPECS[name]
  kw = {**BASE, **overrides}
  if model_type == "gpt2":
    kw = {k: v for k, v in kw.items() if k not in (
      "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
      "num_key_value_heads", "max_position_embeddings")}
  cfg = transformers.AutoConfig.for_model(model_type, **kw)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
    cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    for p in model.parameters():  # perturb norms and biases too
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  cache = {}

  def get(name: str):
    if name not in cache:
      torch_model = _hf_model(name)
      path = tmp_path_factory.mktemp(name)
      torch_model.save_pretrained(path)
      cache[name] = (hf.load(path), torch_model)
    return cache[name]

  return get


PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 22, 71], [3, 3, 50, 88, 14]]


@pytest.mark.parametrize("name", list(SPECS))
def test_cached_logits_match_full_forward(models, name):
  """Prefill of a left-padded batch, then one token at a time, gives the full forward's logits."""
  model, _ = models(name)
  rng = np.random.default_rng(0)
  B, T, T0 = 3, 12, 6
  ids = rng.integers(3, VOCAB, size=(B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, :2] = 0  # left padding
  mask[2, :4] = 0
  ids[mask == 0] = PAD
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), positions=jnp.asarray(positions)))

  cache = model.init_cache(B, T)
  kv_mask = jnp.asarray(mask)
  h, cache = model.cached_hidden_states(ids[:, :T0], positions[:, :T0], cache, 0, kv_mask)
  got = [np.asarray(model.logits_from_hidden(h))]
  for t in range(T0, T):
    h, cache = model.cached_hidden_states(ids[:, t:t + 1], positions[:, t:t + 1], cache, t, kv_mask)
    got.append(np.asarray(model.logits_from_hidden(h)))
  got = np.concatenate(got, axis=1)
  real = mask.astype(bool)  # padding queries are never read
  np.testing.assert_allclose(got[real], full[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(SPECS))
def test_greedy_matches_transformers(models, name):
  model, torch_model = models(name)
  N = 10
  res = generate.Generator(model, pad_id=PAD)(PROMPTS, max_new_tokens=N, stop_ids=(EOS,))
  P = max(len(p) for p in PROMPTS)
  ids = torch.tensor([[PAD] * (P - len(p)) + p for p in PROMPTS])
  mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in PROMPTS])
  with torch.no_grad():
    ref = torch_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N,
                               do_sample=False, eos_token_id=EOS, pad_token_id=PAD)[:, P:].tolist()
  for r, row in enumerate(ref):
    want = row[: row.index(EOS) + 1] if EOS in row else row
    assert res.tokens[r] == want, f"row {r}"
  assert res.new_tokens == sum(len(t) for t in res.tokens)


def test_stop_tokens_end_rows_and_batches_repeat_nothing(models):
  model, _ = models("llama")
  gen = generate.Generator(model, pad_id=PAD)
  free = gen(PROMPTS, max_new_tokens=8)
  assert all(len(t) == 8 for t in free.tokens)
  stop = free.tokens[0][2]  # row 0 stops by its third token
  stopped = gen(PROMPTS, max_new_tokens=8, stop_ids=(stop,))
  assert len(stopped.tokens[0]) <= 3
  for full, cut in zip(free.tokens, stopped.tokens):
    n = full.index(stop) + 1 if stop in full else len(full)
    assert cut == full[:n]
  # Batches of 2 (the last one short) give the same greedy tokens as one batch of 3.
  assert gen(PROMPTS, max_new_tokens=8, batch_size=2).tokens == free.tokens


def test_sampling_is_seeded_and_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  s = generate.Sampling(temperature=1.0, top_p=0.7)
  kept = np.isfinite(np.asarray(generate.filter_logits(logits, s)))
  assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
  kept = np.isfinite(np.asarray(generate.filter_logits(logits, generate.Sampling(1.0, top_k=3))))
  assert kept.tolist() == [[True, True, True, False]]
  draws = [int(generate.next_token(logits, generate.Sampling(1.0, top_k=2), jax.random.key(i))[0])
           for i in range(40)]
  assert set(draws) == {0, 1}
  again = [int(generate.next_token(logits, generate.Sampling(1.0, top_k=2), jax.random.key(i))[0])
           for i in range(40)]
  assert draws == again
  with pytest.raises(ValueError, match="top_p"):
    generate.Sampling(top_p=0.0)


def test_sampled_generation_depends_on_seed(models):
  model, _ = models("llama")
  gen = generate.Generator(model, pad_id=PAD)
  s = generate.Sampling(temperature=1.5, top_k=20, top_p=0.95)
  a = gen(PROMPTS, max_new_tokens=12, sampling=s, seed=1).tokens
  assert a == gen(PROMPTS, max_new_tokens=12, sampling=s, seed=1).tokens
  assert a != gen(PROMPTS, max_new_tokens=12, sampling=s, seed=2).tokens


def _tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, "<end>": 3, "hello": 4, "world": 5}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                     special_tokens=[("<s>", 2), ("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              eos_token="</s>", pad_token="<pad>")


def test_chat_template_end_of_turn_tokens_stop():
  """The end-of-turn token a chat template writes stops generation, here and in an export."""
  from jaxtune.hf import generation

  tok = _tokenizer()
  tok.add_tokens(["<|im_end|>"], special_tokens=True)
  end = tok.convert_tokens_to_ids("<|im_end|>")
  assert generate.stop_ids(tok, None, []) == {1}  # no template: EOS only
  tok.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
  assert generate.stop_ids(tok, None, []) == {1, end}
  assert generation.generation_config(tok, None) == {
    "bos_token_id": 2, "eos_token_id": [1, end], "pad_token_id": 0}
  # The base model's own file is kept (sampling defaults too) and its EOS comes first.
  base = {"eos_token_id": 9, "temperature": 0.7, "transformers_version": "4.0"}
  assert generation.generation_config(tok, None, base) == {
    "bos_token_id": 2, "eos_token_id": [9, 1, end], "pad_token_id": 0, "temperature": 0.7}


def test_prompts_encoding_and_stop_tokens(tmp_path):
  tok = _tokenizer()
  # A post-processor that appends EOS: the prompt continues, so the EOS goes.
  assert generate.encode(tok, "hello world", chat=False) == [2, 4, 5]
  with pytest.raises(ValueError, match="chat template"):
    generate.encode(tok, "hello", chat=True)
  assert generate.stop_ids(tok, None, ["<end>", "7"]) == {1, 3, 7}
  with pytest.raises(ValueError, match="--stop='nope'"):
    generate.stop_ids(tok, None, ["nope"])
  (tmp_path / "p.txt").write_text("first\n\nsecond\n")
  assert generate.read_prompts(["a"], str(tmp_path / "p.txt")) == ["a", "first", "second"]
  (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n{"text": "y"}\n')
  with pytest.raises(ValueError, match=r"p\.jsonl:2"):
    generate.read_prompts([], str(tmp_path / "p.jsonl"))
  with pytest.raises(ValueError, match="no prompts"):
    generate.read_prompts([], "")


def test_bad_prompts_files_are_data_errors_naming_the_line(tmp_path):
  from jaxtune import errors

  (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\nnot json\n')
  with pytest.raises(errors.DataError, match=r"p\.jsonl:2: not JSON"):
    generate.read_prompts([], str(tmp_path / "p.jsonl"))
  (tmp_path / "p.txt").write_bytes(b"\xff\xfe")
  with pytest.raises(errors.DataError, match="not UTF-8"):
    generate.read_prompts([], str(tmp_path / "p.txt"))
  with pytest.raises(FileNotFoundError, match="no such file") as missing:
    generate.read_prompts([], str(tmp_path / "none.txt"))
  assert isinstance(missing.value, errors.DataError)
  with pytest.raises(errors.DataError, match="a directory"):
    generate.read_prompts([], str(tmp_path))
  (tmp_path / "empty.txt").write_text("\n\n")
  with pytest.raises(errors.ConfigError, match="empty.txt holds no prompts"):
    generate.read_prompts([], str(tmp_path / "empty.txt"))
  with pytest.raises(errors.ConfigError, match="--top_p=0"):
    generate.Sampling(top_p=0.0)


def test_prompts_from_split_cut_where_the_loss_starts():
  arrays = {
    "input_ids": np.array([[7, 8, 9, 10, 11, 0], [5, 6, 7, 8, 3, 4]]),
    "attention_mask": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
    "loss_mask": np.array([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
    "segment_ids": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 2, 2]]),
  }
  # Row 0: the prompt before the completion; row 1: half of its first packed document.
  assert generate.prompts_from_split(arrays, 5) == [[7, 8], [5, 6]]
  assert generate.prompts_from_split(arrays, 1, max_len=1) == [[8]]
