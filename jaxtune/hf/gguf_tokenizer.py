"""GGUF tokenizers both ways: an HF fast tokenizer from a file's `tokenizer.*` metadata, and back.

`load_tokenizer` builds an HF `PreTrainedTokenizerFast` from the metadata with the `tokenizers`
library (no torch, unlike transformers' own GGUF path); `write_tokenizer` lays a run's HF
tokenizer out as that metadata for `jaxtune export --format=gguf`, as llama.cpp's
convert_hf_to_gguf.py does: the vocabulary in id order (padded to the embedding's rows with
unused `[PAD<i>]` tokens), token types (special added tokens CONTROL, other added tokens
USER_DEFINED), the merges, the special ids, the add-BOS/EOS flags and the chat template; for
Gemma 3's SentencePiece vocabulary also the scores and BYTE tokens (`_sentencepiece_vocab`).

Both directions share one table of pre-tokenizers (`_PRE_TOKENIZERS`, llama-vocab.cpp's names for
how text is split before BPE): reading builds the split a name stands for; writing names the
split whose behaviour equals the tokenizer's on a probe text, and refuses a tokenizer none equals
(llama.cpp would split its text otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from jaxtune.hf.errors import CheckpointError, UnsupportedConfigError
from jaxtune.hf.gguf import field_value, open_reader

__all__ = ["SENTENCEPIECE_ARCHS", "load_tokenizer", "write_tokenizer"]
# Architectures whose SentencePiece ('llama') vocabulary is read and written: Gemma 2 and 3 (the
# same vocabulary layout; llama.cpp's SentencePiece handling differs per architecture).
SENTENCEPIECE_ARCHS = ("gemma2", "gemma3")
log = logging.getLogger(__name__)

# tokenizer.ggml.pre -> how llama.cpp splits text before BPE (llama-vocab.cpp's regex table).
_GPT2_SPLIT = "gpt2"
_DIGITS_THEN_GPT2 = "digits"  # "\p{N}" isolated first, then the GPT-2 regex
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's: Llama 3's with each digit isolated (transformers' Qwen2 tokenizer, llama-vocab.cpp's
# LLAMA_VOCAB_PRE_TYPE_QWEN2). Qwen2.5 and Qwen3 files say "qwen2" too.
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_TOKENIZERS = {
  "gpt2": _GPT2_SPLIT, "gpt-2": _GPT2_SPLIT, "mpt": _GPT2_SPLIT, "olmo": _GPT2_SPLIT,
  "smollm": _DIGITS_THEN_GPT2, "starcoder": _DIGITS_THEN_GPT2, "refact": _DIGITS_THEN_GPT2,
  "codeshell": _DIGITS_THEN_GPT2,
  "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
  "smaug-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
}
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 3, 4, 5, 6  # llama.cpp token types



def _pre_tokenizer(kind: str | None, where: str):
  from tokenizers import Regex, pre_tokenizers

  if kind is None:  # files from before llama.cpp recorded it used the GPT-2 split
    log.warning("%s: no tokenizer.ggml.pre; splitting text the GPT-2 way", where)
    kind = "gpt2"
  split = _PRE_TOKENIZERS.get(kind)
  if split is None:
    raise UnsupportedConfigError(
      f"{where}: GGUF metadata tokenizer.ggml.pre={kind!r} is not supported; known: "
      f"{sorted(_PRE_TOKENIZERS)}"
    )
  # The GPT-2 split is ByteLevel's own regex; the others split first with theirs.
  gpt2_regex = split in (_GPT2_SPLIT, _DIGITS_THEN_GPT2)
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=gpt2_regex)
  if split == _GPT2_SPLIT:
    return byte_level
  if split == _DIGITS_THEN_GPT2:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])


def load_tokenizer(path: str | os.PathLike):
  """An HF `PreTrainedTokenizerFast` rebuilt from a GGUF file's `tokenizer.*` metadata.

  Supports byte-level BPE vocabularies (`tokenizer.ggml.model` 'gpt2': GPT-2, SmolLM, Llama 3,
  ...), and Gemma 2/3's SentencePiece one ('llama' in a `gemma2`/`gemma3` file) through transformers. Control tokens become special tokens (kept whole, skipped when decoding with
  skip_special_tokens), user-defined ones plain added tokens; the chat template is set.
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models, processors
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import bytes_to_unicode

  path = str(Path(path))
  reader = open_reader(path)
  fields = reader.fields

  def meta(key, default=None):
    return field_value(fields[key]) if key in fields else default

  model = meta("tokenizer.ggml.model")
  if model == "llama" and meta("general.architecture") in SENTENCEPIECE_ARCHS:
    # Gemma's SentencePiece vocabulary (262k pieces with scores, byte fallback): transformers'
    # GGUF tokenizer converter rebuilds it (~15 s); llama.cpp's SentencePiece handling differs
    # per architecture, so only the architecture checked against it is delegated.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  if model != "gpt2":
    raise UnsupportedConfigError(
      f"{path}: GGUF metadata tokenizer.ggml.model={model!r} is not supported; jaxtune builds "
      "byte-level BPE ('gpt2') tokenizers from GGUF files (and Gemma 2/3's SentencePiece 'llama' "
      "vocabulary)"
    )
  tokens = meta("tokenizer.ggml.tokens")
  types = meta("tokenizer.ggml.token_type") or [1] * len(tokens)
  merges = meta("tokenizer.ggml.merges")
  if not tokens or merges is None:
    raise CheckpointError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")

  # Byte-level vocabularies spell every token in GPT-2's printable byte alphabet; a token that
  # is not (a user-defined one stored as raw text) is respelled so BPE can still produce it.
  alphabet = bytes_to_unicode()
  spelled = set(alphabet.values())
  respell = lambda t: t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))
  vocab = {}
  for i, t in enumerate(tokens):
    vocab.setdefault(respell(t), i)
  if len(vocab) != len(tokens):
    raise CheckpointError(f"{path}: tokenizer.ggml.tokens has {len(tokens) - len(vocab)} duplicate token(s)")
  bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
  tok = Tokenizer(bpe)
  tok.pre_tokenizer = _pre_tokenizer(meta("tokenizer.ggml.pre"), path)
  tok.decoder = decoders.ByteLevel()
  # llama.cpp matches control and user-defined tokens whole in the text; so must we, or
  # `<|im_start|>` would be cut into `<`, `|`, `im`, ... Only tokens already spelled in the
  # byte alphabet can be added under their own id.
  tok.add_special_tokens([
    AddedToken(t, special=True, normalized=False)
    for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= spelled
  ])
  tok.add_tokens([
    AddedToken(t, special=False, normalized=False)
    for t, k in zip(tokens, types) if k == _USER_DEFINED and set(t) <= spelled
  ])
  if tok.get_vocab_size() != len(tokens):
    raise CheckpointError(
      f"{path}: tokenizer has {tok.get_vocab_size()} ids after adding special tokens, the file {len(tokens)}"
    )

  def token(key):
    i = meta(f"tokenizer.ggml.{key}")
    return tokens[i] if i is not None and 0 <= i < len(tokens) else None

  bos, eos = token("bos_token_id"), token("eos_token_id")
  add_bos = bool(meta("tokenizer.ggml.add_bos_token", False))
  add_eos = bool(meta("tokenizer.ggml.add_eos_token", False))
  if (add_bos and bos) or (add_eos and eos):
    pre = [bos] if add_bos and bos else []
    post = [eos] if add_eos and eos else []
    tok.post_processor = processors.TemplateProcessing(
      single=" ".join([*pre, "$A", *post]), pair=" ".join([*pre, "$A", *post, *pre, "$B", *post]),
      special_tokens=[(t, vocab[t]) for t in dict.fromkeys(pre + post)],
    )
  else:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  arch = meta("general.architecture")
  kwargs = dict(
    tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=token("unknown_token_id"),
    pad_token=token("padding_token_id"), clean_up_tokenization_spaces=False,
    chat_template=meta("tokenizer.chat_template"),
  )
  ctx = meta(f"{arch}.context_length")
  if ctx:
    kwargs["model_max_length"] = ctx
  return PreTrainedTokenizerFast(**{k: v for k, v in kwargs.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# Writing: an HF tokenizer as tokenizer.* metadata

# One name per distinct split, as convert_hf_to_gguf.py names them (llama.cpp and transformers'
# GGUF loader know these): the name written is the first whose split equals the tokenizer's.
_WRITTEN_PRE = ("gpt2", "smollm", "llama-bpe", "qwen2")
# Text that tells the splits apart: digit runs (isolated / in threes / whole), contractions,
# runs of spaces and newlines, punctuation, non-Latin letters and digits.
_PROBE = ("Hello world's 1234567 DON'T do it, 3.14!!\n\n\t  x  ¿Qué tal? 日本語 ٣٤٥ a1b22c"
          "  \r\n end...  ")


def _pre_name(backend, where: str) -> str:
  ours = backend.pre_tokenizer
  got = ours.pre_tokenize_str(_PROBE) if ours is not None else None
  for name in _WRITTEN_PRE:
    if _pre_tokenizer(name, where).pre_tokenize_str(_PROBE) == got:
      return name
  raise UnsupportedConfigError(
    f"{where}: the tokenizer splits text before BPE in a way no llama.cpp pre-tokenizer jaxtune "
    f"writes does ({', '.join(_WRITTEN_PRE)}); llama.cpp would tokenize differently, so it is "
    "not written as GGUF"
  )


def write_tokenizer(writer, tok, vocab_size: int, arch: str, where: str) -> None:
  """Add `tok` (an HF fast tokenizer) to `writer` (a gguf.GGUFWriter) for an `arch` model.

  Byte-level BPE tokenizers are written as llama.cpp's 'gpt2' vocabularies; Gemma 3's
  SentencePiece one (BPE with byte fallback) as its 'llama' vocabulary. `vocab_size` is the
  embedding's row count: ids past the tokenizer's are written as unused `[PAD<i>]` tokens, as
  convert_hf_to_gguf.py pads them, so the two agree as llama.cpp requires.
  """
  backend = getattr(tok, "backend_tokenizer", None)
  model = json.loads(backend.to_str())["model"] if backend is not None else {}
  sentencepiece = model.get("type") == "BPE" and model.get("byte_fallback")
  if model.get("type") != "BPE" or sentencepiece and arch not in SENTENCEPIECE_ARCHS:
    kind = "SentencePiece-style BPE (byte fallback)" if sentencepiece else (
      model.get("type") or type(tok).__name__)
    raise UnsupportedConfigError(
      f"{where}: the run's tokenizer is {kind}; jaxtune writes byte-level BPE tokenizers "
      "(GPT-2, SmolLM, Llama 3, Qwen) to GGUF, and Gemma's SentencePiece one for gemma2/gemma3"
    )
  vocab = backend.get_vocab(with_added_tokens=True)
  by_id = {i: t for t, i in vocab.items()}
  if len(by_id) != len(vocab) or max(by_id) >= vocab_size:
    raise UnsupportedConfigError(
      f"{where}: the tokenizer has ids up to {max(by_id)} but the model has {vocab_size} "
      "embedding rows; llama.cpp needs one token per row"
    )
  added = {a.content: a for a in backend.get_added_tokens_decoder().values()}
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or ()]
  if sentencepiece:
    _sentencepiece_vocab(writer, by_id, added, vocab_size)
  else:
    _byte_level_vocab(writer, by_id, added, vocab_size, where)
    writer.add_tokenizer_pre(_pre_name(backend, where))
  # Gemma 3's files carry no merges (readers rebuild them from the order); written, transformers
  # uses the run's own, and llama.cpp's SentencePiece tokenizer reads the scores instead.
  writer.add_token_merges(merges)
  ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id,
         "pad": tok.pad_token_id}
  for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                   ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
    if ids[key] is not None:
      add(int(ids[key]))
  # What the tokenizer puts around a text by itself (llama.cpp adds BOS/EOS from these flags).
  plain = tok("a", add_special_tokens=False)["input_ids"]
  full = tok("a")["input_ids"]
  start = full.index(plain[0]) if plain and plain[0] in full else 0
  writer.add_add_bos_token(ids["bos"] is not None and full[:start] == [ids["bos"]])
  writer.add_add_eos_token(ids["eos"] is not None and full[start + len(plain):] == [ids["eos"]])
  template = getattr(tok, "chat_template", None)
  if isinstance(template, str):
    writer.add_chat_template(template)


def _byte_level_vocab(writer, by_id: dict, added: dict, vocab_size: int, where: str) -> None:
  from transformers.convert_slow_tokenizer import bytes_to_unicode

  spelled = set(bytes_to_unicode().values())
  tokens, types = [], []
  for i in range(vocab_size):
    t = by_id.get(i)
    if t is None:  # a gap or the padded rows: never produced by the tokenizer
      tokens.append(f"[PAD{i}]")
      types.append(_UNUSED)
    elif t in added:
      tokens.append(t)
      types.append(_CONTROL if added[t].special else _USER_DEFINED)
    else:
      if not set(t) <= spelled:
        raise UnsupportedConfigError(f"{where}: token {i} {t!r} is not spelled in the byte-level "
                                     "alphabet; not a byte-level BPE vocabulary")
      tokens.append(t)
      types.append(_NORMAL)
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list(tokens)
  writer.add_token_types(types)


def _sentencepiece_vocab(writer, by_id: dict, added: dict, vocab_size: int) -> None:
  """Gemma 3's vocabulary as llama.cpp's converter writes it from tokenizer.model.

  Types: special added tokens CONTROL, other added tokens USER_DEFINED, `<0xXX>` BYTE, the rest
  NORMAL. Scores: llama.cpp's SentencePiece tokenizer merges the pair whose result scores
  highest, and the pieces' order is their merge order, so NORMAL pieces score minus their rank
  (Gemma's own file: the same order); the others -1000 (BYTE 0), as in Gemma's file. Runs of
  spaces are written as spaces, USER_DEFINED, as Gemma's file has them (transformers' GGUF
  loader spells them with `▁` again, as the run's tokenizer does).
  """
  tokens, types, scores = [], [], []
  rank = 0
  for i in range(vocab_size):
    t = by_id.get(i)
    if t is None:
      t, kind, score = f"[PAD{i}]", _UNUSED, -1000.0
    elif t in added:
      kind, score = (_CONTROL if added[t].special else _USER_DEFINED), -1000.0
    elif re.fullmatch(r"<0x[0-9A-F]{2}>", t):
      kind, score = _BYTE, 0.0
    elif len(t) > 1 and set(t) == {"\u2581"}:
      t, kind, score = " " * len(t), _USER_DEFINED, -1000.0
    else:
      kind, score = _NORMAL, -float(rank)
      rank += 1
    tokens.append(t)
    types.append(kind)
    scores.append(score)
  writer.add_tokenizer_model("llama")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_scores(scores)
  writer.add_add_space_prefix(False)  # Gemma 3: no space before the first word
