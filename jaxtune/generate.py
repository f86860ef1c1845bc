"""Batched autoregressive generation with a KV cache: one jitted prefill + `lax.while_loop` decode.

Prompts of a batch are left-padded to a common length P (rounded up to a multiple of
`PAD_MULTIPLE` so nearby lengths share a compile). Each layer's cache holds P + max_new_tokens
slots; the prefill writes the prompts at slots 0..P-1, then every decode step writes one token at
slot P + t for all rows at once. Rotary (or GPT-2 learned) positions count only a row's real
tokens, as HF generation derives them from the attention mask. A row stops at its first stop
token (which it keeps); the loop ends when every row has stopped or the budget is spent.

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, then the top-k and
top-p (nucleus) filters, then a categorical draw from a seeded key folded with the step.

Shape legend: B batch, P prompt length, S cache length, V vocab, N new tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.data import templates
from jaxtune.errors import ConfigError, DataError

PAD_MULTIPLE = 16


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen; hashable, so it is static under jit."""

  temperature: float = 0.0  # 0: greedy
  top_k: int = 0  # 0: no top-k filter
  top_p: float = 1.0  # 1: no nucleus filter

  def __post_init__(self):
    if self.temperature < 0:
      raise ConfigError(f"--temperature={self.temperature}: must be >= 0 (0 is greedy)")
    if self.top_k < 0:
      raise ConfigError(f"--top_k={self.top_k}: must be >= 0 (0 turns it off)")
    if not 0.0 < self.top_p <= 1.0:
      raise ConfigError(f"--top_p={self.top_p}: must be in (0, 1] (1 turns it off)")


def filter_logits(logits_BV: jax.Array, sampling: Sampling) -> jax.Array:
  """float32 logits / temperature with tokens outside top-k / top-p set to -inf."""
  logits = logits_BV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k and sampling.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1.0:
    sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it
    # is still below top_p (so the most likely token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(before < sampling.top_p, sorted_desc, jnp.inf)
    cutoff = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def next_token(logits_BV: jax.Array, sampling: Sampling, key: jax.Array) -> jax.Array:
  if sampling.temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits_BV, sampling), axis=-1).astype(jnp.int32)


def _forward(model, ids_BT, positions_BT, cache, index, kv_mask_BS):
  """Logits [B, V] of the last of the T new tokens, and the updated cache."""
  h_BTD, cache = model.cached_hidden_states(ids_BT, positions_BT, cache, index, kv_mask_BS)
  return model.logits_from_hidden(h_BTD[:, -1:])[:, 0], cache


def _decode(graphdef, state, ids_BP, mask_BP, key, *, max_new: int, sampling: Sampling,
            stop_ids: tuple[int, ...], pad_id: int):
  """Tokens [B, max_new] (pad after a row stops) and the number generated per row [B]."""
  model = nnx.merge(graphdef, state)
  B, P = ids_BP.shape
  S = P + max_new
  mask_BP = mask_BP.astype(jnp.int32)
  kv_mask_BS = jnp.concatenate([mask_BP, jnp.ones((B, max_new), jnp.int32)], axis=1)
  positions_BP = jnp.maximum(jnp.cumsum(mask_BP, axis=1) - 1, 0)
  lengths_B = jnp.sum(mask_BP, axis=1)
  cache = model.init_cache(B, S)
  logits_BV, cache = _forward(model, ids_BP, positions_BP, cache, 0, kv_mask_BS)
  token_B = next_token(logits_BV, sampling, jax.random.fold_in(key, 0))
  stops = jnp.asarray(stop_ids or (-1,), jnp.int32)

  def cond(carry):
    t, _, _, _, done_B, _ = carry
    return (t < max_new) & ~jnp.all(done_B)

  def body(carry):
    t, token_B, cache, out_BN, done_B, count_B = carry
    out_BN = out_BN.at[:, t].set(jnp.where(done_B, pad_id, token_B))
    count_B = count_B + (~done_B).astype(jnp.int32)
    done_B = done_B | jnp.isin(token_B, stops)
    logits_BV, cache = _forward(model, token_B[:, None], (lengths_B + t)[:, None], cache, P + t,
                                kv_mask_BS)
    token_B = next_token(logits_BV, sampling, jax.random.fold_in(key, t + 1))
    return t + 1, token_B, cache, out_BN, done_B, count_B

  carry = (jnp.int32(0), token_B, cache, jnp.full((B, max_new), pad_id, jnp.int32),
           jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32))
  _, _, _, out_BN, _, count_B = jax.lax.while_loop(cond, body, carry)
  return out_BN, count_B


@dataclasses.dataclass
class Result:
  tokens: list[list[int]]  # per prompt, the generated ids up to and including a stop token
  new_tokens: int  # generated tokens over all rows
  seconds: float  # wall time of the compiled calls (compilation excluded)
  compile_seconds: float

  @property
  def tokens_per_s(self) -> float:
    return self.new_tokens / max(self.seconds, 1e-9)


class Generator:
  """Generates from one model; compiled programs are kept per (batch, padded length) shape."""

  def __init__(self, model: nnx.Module, *, pad_id: int = 0):
    if not hasattr(model, "cached_hidden_states"):
      raise ConfigError(f"{type(model).__name__} cannot generate (it has no KV-cached forward); "
                        "generate with a decoder model (Llama, Qwen, SmolLM, ...)")
    if getattr(model, "task", "causal_lm") != "causal_lm":
      raise ConfigError(f"generation needs a causal LM, got a model with task={model.task!r}; for "
                        "a classifier use `jaxtune eval` or jaxtune.predict.classify")
    model.eval()
    self.graphdef, self.state = nnx.split(model)
    self.pad_id = int(pad_id)
    self._compiled: dict = {}

  def _program(self, shape, max_new, sampling, stop_ids):
    """(compiled decode program, seconds spent compiling it now: 0 when it was cached)."""
    key = (shape, max_new, sampling, stop_ids)
    if key in self._compiled:
      return self._compiled[key], 0.0
    fn = functools.partial(_decode, self.graphdef, max_new=max_new, sampling=sampling,
                           stop_ids=stop_ids, pad_id=self.pad_id)
    ids = jax.ShapeDtypeStruct(shape, jnp.int32)
    t0 = time.perf_counter()
    self._compiled[key] = jax.jit(fn).lower(self.state, ids, ids, jax.random.key(0)).compile()
    return self._compiled[key], time.perf_counter() - t0

  def __call__(self, prompts: list[list[int]], *, max_new_tokens: int, sampling: Sampling = Sampling(),
               stop_ids=(), seed: int = 0, batch_size: int = 0, state=None) -> Result:
    """Generate for every prompt, `batch_size` prompts per call (0: all at once).

    `state` (an `nnx.split` state of the same model structure, e.g. newer weights during
    training) replaces the model's weights for this call and reuses the compiled programs.
    """
    state = self.state if state is None else state
    if max_new_tokens < 1:
      raise ConfigError(f"--max_new_tokens={max_new_tokens}: must be >= 1")
    for i, p in enumerate(prompts):
      if not p:
        raise ConfigError(f"prompt {i} encodes to no tokens: generation needs at least one; give "
                          "it some text")
    stop_ids = tuple(sorted({int(s) for s in stop_ids}))
    batch_size = batch_size or len(prompts)
    out, total, seconds, compile_s = [], 0, 0.0, 0.0
    for start in range(0, len(prompts), batch_size):
      chunk = prompts[start:start + batch_size]
      P = -(-max(len(p) for p in chunk) // PAD_MULTIPLE) * PAD_MULTIPLE
      ids = np.full((batch_size, P), self.pad_id, np.int32)
      mask = np.zeros((batch_size, P), np.int32)
      for r, p in enumerate(chunk):  # left padding; a short last batch repeats row 0
        ids[r, P - len(p):], mask[r, P - len(p):] = p, 1
      for r in range(len(chunk), batch_size):
        ids[r], mask[r] = ids[0], mask[0]
      compiled, c_s = self._program(ids.shape, max_new_tokens, sampling, stop_ids)
      compile_s += c_s
      t0 = time.perf_counter()
      tokens, counts = jax.device_get(compiled(state, ids, mask, jax.random.key(seed + start)))
      seconds += time.perf_counter() - t0
      for r in range(len(chunk)):
        out.append([int(x) for x in tokens[r, :counts[r]]])
        total += int(counts[r])
    return Result(out, total, seconds, compile_s)


# ------------------------------------------------------------ prompts, tokenizers, sources
# (used by `jaxtune generate` and by the train driver's text samples)


def prompts_from_split(arrays: dict[str, np.ndarray], n: int, max_len: int = 64) -> list[list[int]]:
  """Prompts from the first document of the first `n` rows of an encoded causal-LM split.

  A document whose loss starts after its first token (SFT with completion_only) is cut where
  the loss starts, so the model writes the completion it was trained to write; a document
  trained on every token is cut in half. At most the last `max_len` prompt tokens are kept.
  """
  out = []
  for r in range(min(n, len(arrays["input_ids"]))):
    keep = arrays["attention_mask"][r].astype(bool)
    if "segment_ids" in arrays:
      keep &= arrays["segment_ids"][r] == arrays["segment_ids"][r][np.argmax(keep)]
    ids = arrays["input_ids"][r][keep]
    loss = arrays.get("loss_mask", np.ones_like(arrays["input_ids"]))[r][keep]
    first = int(np.argmax(loss > 0)) if loss.any() else len(ids)
    cut = first if first > 0 else len(ids) // 2
    if cut > 0:
      out.append([int(t) for t in ids[:cut][-max_len:]])
  return out


class PromptsFileError(DataError, FileNotFoundError):
  """A --prompts_file that is missing or not a file."""


def read_prompts(prompts: list[str], prompts_file: str) -> list[str]:
  out = list(prompts)
  if prompts_file:
    path = Path(prompts_file)
    if not path.exists():
      raise PromptsFileError(f"--prompts_file={prompts_file}: no such file")
    if path.is_dir():
      raise PromptsFileError(f"--prompts_file={prompts_file}: a directory, not a file")
    try:
      text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"--prompts_file={prompts_file}: not UTF-8 text ({e.reason} at byte "
                      f"{e.start}); give a .txt or .jsonl file") from e
    if path.suffix in (".jsonl", ".json"):
      for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{i}: not JSON ({e.msg}); each line must be an object "
                          'like {"prompt": "..."}') from e
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
          raise DataError(f"{path}:{i}: expected a JSON object with a string 'prompt'")
        out.append(row["prompt"])
    else:
      out += [line for line in text.splitlines() if line.strip()]
  if not out:
    where = f"--prompts_file={prompts_file} holds no prompts" if prompts_file else "no prompts"
    raise ConfigError(f"{where}: pass --prompt=... or a --prompts_file with at least one")
  return out


def encode(tokenizer, prompt: str, *, chat: bool, system: str = "") -> list[int]:
  """Token ids of one prompt: the chat template with a generation prompt, or BOS + text."""
  if chat:
    if not getattr(tokenizer, "chat_template", None):
      raise ConfigError("--chat: the tokenizer has no chat template; leave --chat out or pass "
                        "--tokenizer with one")
    messages = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": prompt})
    text = templates.render(tokenizer, messages, add_generation_prompt=True)  # sandboxed, limited
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
  ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
  if ids and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
    ids.pop()  # a post-processor that appends EOS: the text continues, it does not end
  return ids


def stop_ids(tokenizer, model_config, extra: list[str]) -> set[int]:
  """EOS of the tokenizer and the model config, the chat template's end-of-turn tokens (as an
  export's generation_config.json lists them, `jaxtune.hf.generation`), plus --stop tokens."""
  from jaxtune.hf import generation

  ids = set(generation.chat_stop_ids(tokenizer))
  for eos in (getattr(tokenizer, "eos_token_id", None), getattr(model_config, "eos_token_id", None)):
    if isinstance(eos, int):
      ids.add(eos)
    elif eos:
      ids.update(int(e) for e in eos)
  vocab = tokenizer.get_vocab() if tokenizer is not None else {}
  for s in extra:
    if s.lstrip("-").isdigit():
      ids.add(int(s))
    elif s in vocab:
      ids.add(vocab[s])
    else:
      raise ConfigError(f"--stop={s!r}: not a token of the vocabulary nor an integer id")
  return ids


def pad_id(tokenizer) -> int:
  for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
    if tid is not None:
      return int(tid)
  return 0
