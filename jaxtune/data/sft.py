"""Supervised fine-tuning rows -> token documents with a loss mask, padded or packed into rows.

Three formats (`data.sft_format`, or 'auto' from the first train row's columns):
- chat: a list of {role, content} messages (ShareGPT's {from, value} is accepted too), rendered
  with the tokenizer's chat template. With completion_only, the loss falls on the assistant
  turns only: each turn's characters are found by rendering the conversation prefix by prefix
  (up to the turn with the generation prompt, then through the turn) and taking the difference,
  so any template that renders prefixes consistently works, `{% generation %}` or not. The span
  keeps the end-of-turn token (the model must learn to stop) but not the whitespace the
  template puts after it. Tokens are then marked through the fast tokenizer's offsets, so BPE
  merges at a boundary cannot shift the mask.
- prompt_completion: prompt tokens (with the tokenizer's BOS if it adds one), completion tokens,
  EOS; the loss on the completion and EOS.
- text: the text and EOS, the loss on every token.

A row that would train on nothing is a bad row with the reason (no assistant message, a template
that renders no assistant text, a prompt that alone fills seq_len so truncation removed the
completion); a split left with no loss tokens is always an error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging

import numpy as np

from jaxtune.data import packing, templates
from jaxtune.data.classification import RowError, encoded_rows, pad_token_id, text_field
from jaxtune.data.pipeline import Dataset, Splits
from jaxtune.data.readers import BadRows, DataError, Row

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


def detect_format(fields: dict, d) -> str:
  if d.messages_column in fields:
    return "chat"
  if d.prompt_column in fields and d.completion_column in fields:
    return "prompt_completion"
  if d.text_column in fields:
    return "text"
  raise DataError(
    f"{d.source}: cannot tell the SFT format from the first row's columns {sorted(fields)}: "
    f"expected {d.messages_column!r} (chat), {d.prompt_column!r} + {d.completion_column!r} "
    f"(prompt_completion) or {d.text_column!r} (text); set data.sft_format and the column names"
  )


def chat_messages(value, column: str, system_prompt: str = "") -> list[dict]:
  """Validated {role, content} messages; a JSON string (from csv) is parsed first."""
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      raise RowError(f"column {column!r} is text, not a (JSON) list of messages") from None
  if value is None:
    raise RowError(f"missing column {column!r}")
  if not isinstance(value, list) or not value:
    raise RowError(f"column {column!r} is not a non-empty list of messages")
  out = []
  for j, m in enumerate(value):
    if not isinstance(m, dict):
      raise RowError(f"message {j} in column {column!r} is not an object")
    role = m.get("role", m.get("from"))
    role = _ROLE_ALIASES.get(role, role)
    content = m.get("content", m.get("value"))
    if role not in ROLES:
      raise RowError(f"message {j}: unknown role {role!r} (expected one of {ROLES})")
    if content is None:
      raise RowError(f"message {j} ({role}) has no text content (null or missing)")
    if not isinstance(content, str):
      raise RowError(f"message {j} ({role}) has no text content: got {type(content).__name__}")
    out.append({"role": role, "content": content})
  if system_prompt and out[0]["role"] != "system":
    out.insert(0, {"role": "system", "content": system_prompt})
  return out


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
  # In a sandbox with time and size limits: a hostile template stops the run (TemplateError
  # naming its file); one that raises for this conversation makes a bad row.
  try:
    return templates.render(tokenizer, messages, add_generation_prompt=generation_prompt)
  except templates.TemplateRejected as e:
    raise RowError(str(e)) from e


def assistant_spans(tokenizer, messages: list[dict], full: str | None = None,
                    limit: int | None = None) -> tuple[str, list[tuple[int, int]]]:
  """The rendered conversation and the [start, end) characters of each assistant turn.

  With `limit` (a character position), turns starting past it are not located, except the
  first: text past the row length is truncated anyway, and rendering every prefix of a long
  conversation is quadratic.
  """
  if full is None:
    full = _render(tokenizer, messages, False)
  spans = []
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    try:
      before = _render(tokenizer, messages[:i], True)
    except RowError:
      if i:
        raise
      before = ""  # some templates refuse an empty conversation: the turn starts the text
    if spans and limit is not None and len(before) >= limit:
      break
    through = _render(tokenizer, messages[: i + 1], False)
    if not (full.startswith(before) and full.startswith(through)):
      raise RowError(
        "the chat template does not render the conversation prefix by prefix (rendering the "
        f"first {i} messages is not a prefix of the whole), so assistant turns cannot be located"
      )
    start, end = len(before), len(through)
    while end > start and full[end - 1].isspace():
      end -= 1  # the template's separator after the end-of-turn token is not generated
    if end <= start:
      raise RowError(
        f"the chat template rendered no assistant tokens for message {i}: it shows no "
        "assistant turn (does it use other role names or leave assistant messages out?)"
      )
    if m["content"].strip() not in full[start:end]:
      raise RowError(
        f"the chat template did not render assistant message {i}'s text inside its turn "
        f"(rendered {full[start:end][:80]!r}): the template lacks the expected assistant markers"
      )
    spans.append((start, end))
  return full, spans


def _offsets_encode(tokenizer, text: str, seq_len: int | None = None) -> tuple[list[int], np.ndarray]:
  """Token ids and character offsets of `text`, or of a prefix holding more than seq_len tokens.

  A long conversation is tokenized only up to just past an added token (`<|im_end|>`, ...)
  beyond which seq_len tokens are reached: the tokenizer splits added tokens out before
  anything else, so the prefix's tokens are exactly the whole text's first tokens.
  """
  if not getattr(tokenizer, "is_fast", False):
    raise DataError("sft_format='chat' needs a fast (tokenizers-backed) tokenizer for offsets")
  budget = 8 * seq_len if seq_len else len(text)
  while True:
    cut = len(text)
    if budget < len(text):
      found = [i + len(t) for t in tokenizer.get_added_vocab() if (i := text.find(t, budget)) >= 0]
      cut = min(found, default=len(text))
    enc = tokenizer(text[:cut], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if cut == len(text) or len(enc["input_ids"]) > seq_len:
      return enc["input_ids"], np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    budget *= 2


def span_mask(offsets: np.ndarray, spans: list[tuple[int, int]], num_chars: int) -> np.ndarray:
  """1 for tokens that overlap a character span (zero-width tokens: that start inside one)."""
  chars = np.zeros(num_chars + 1, np.int32)
  for s, e in spans:
    chars[s:e] = 1
  cum = np.concatenate([[0], np.cumsum(chars)])
  a, b = offsets[:, 0], offsets[:, 1]
  return np.where(b > a, cum[b] - cum[a] > 0, chars[a] > 0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TurnShape:
  """What a template writes around an assistant message's text, learned once from a probe."""

  anchor: str  # just before the loss span: the generation prompt ('<|im_start|>assistant\n')
  pre: str  # inside the span, before the text
  post: str  # inside the span, after the text (the end-of-turn token)


_PROBE_USER, _PROBE_REPLY = "Probe question from jaxtune?", "Probe reply from jaxtune."


def probe_turn_shape(tokenizer, system_prompt: str = "") -> TurnShape | None:
  """The template's assistant turn layout, or None when the probe does not render cleanly."""
  msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
  msgs += [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
  try:
    full, spans = assistant_spans(tokenizer, msgs)
    before = _render(tokenizer, msgs[:-1], True)
    base = _render(tokenizer, msgs[:-1], False)
  except RowError:
    return None
  s, e = spans[0]
  k = full.find(_PROBE_REPLY, s, e)
  if k < 0 or not before.startswith(base):
    return None
  return TurnShape(before[len(base):], full[s:k], full[k + len(_PROBE_REPLY) : e])


def fast_spans(full: str, messages: list[dict], shape: TurnShape) -> list[tuple[int, int]] | None:
  """Assistant spans found by searching the one rendering for each message in order.

  Linear in the conversation, where `assistant_spans` renders every prefix; None (use the
  slow way) when a message is not where a message-local template would put it.
  """
  cursor, spans = 0, []
  for m in messages:
    content = m["content"]
    if m["role"] == "assistant":
      pattern = shape.anchor + shape.pre + content + shape.post
      at = full.find(pattern, cursor)
      if at < 0:
        return None
      start, end = at + len(shape.anchor), at + len(pattern)
      cursor = end
      while end > start and full[end - 1].isspace():
        end -= 1  # as in assistant_spans
      if end <= start:
        return None
      spans.append((start, end))
    elif content:
      at = full.find(content, cursor)
      if at < 0:
        return None
      cursor = at + len(content)
  return spans


def encode_chat(tokenizer, messages: list[dict], completion_only: bool,
                seq_len: int | None = None, shape: TurnShape | None = None
                ) -> tuple[list[int], np.ndarray]:
  """Token ids and loss mask of a conversation; `shape` enables the linear span search."""
  if completion_only and not any(m["role"] == "assistant" for m in messages):
    raise RowError("no assistant message: nothing to learn with data.completion_only=True")
  text = _render(tokenizer, messages, False)
  ids, offsets = _offsets_encode(tokenizer, text, seq_len)
  if not completion_only:
    return ids, np.ones(len(ids), np.int32)
  spans = fast_spans(text, messages, shape) if shape is not None else None
  if spans is None:
    limit = int(offsets[seq_len, 0]) if seq_len is not None and len(ids) > seq_len else None
    _, spans = assistant_spans(tokenizer, messages, text, limit)
  covered = int(offsets[-1, 1]) if len(ids) else 0
  if spans and spans[0][0] >= covered:
    # Only a prefix was tokenized (see _offsets_encode) and the first reply starts past it.
    raise RowError(
      f"the text before the first assistant token is more than {len(ids)} tokens, longer than "
      f"data.seq_len={seq_len} allows: truncation removed the whole completion, leaving no loss "
      "tokens (raise seq_len or shorten the prompt)"
    )
  return ids, span_mask(offsets, spans, len(text))


def chat_shape(tokenizer, rows: list[Row], d) -> TurnShape | None:
  """A probed TurnShape, kept only if it matches the prefix rendering on the first rows."""
  shape = probe_turn_shape(tokenizer, d.system_prompt)
  if shape is None:
    return None
  for r in rows[:8]:
    try:
      messages = chat_messages(r.fields.get(d.messages_column), d.messages_column, d.system_prompt)
      text, slow = assistant_spans(tokenizer, messages)
    except RowError:
      continue  # reported with its row later
    if fast_spans(text, messages, shape) != slow:
      log.info("chat template is not message-local; locating assistant turns prefix by prefix")
      return None
  return shape


def _bos_prompt(tokenizer, text: str) -> list[int]:
  ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
  eos = tokenizer.eos_token_id
  if ids and eos is not None and ids[-1] == eos:
    ids.pop()  # a post-processor that also appends EOS: the completion follows, not the end
  return ids


def _with_eos(tokenizer, ids: list[int]) -> list[int]:
  eos = tokenizer.eos_token_id
  return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def encode_prompt_completion(tokenizer, prompt: str, completion: str, completion_only: bool):
  p = _bos_prompt(tokenizer, prompt)
  c = _with_eos(tokenizer, list(tokenizer(completion, add_special_tokens=False, verbose=False)["input_ids"]))
  return p + c, [int(not completion_only)] * len(p) + [1] * len(c)


def encode_text(tokenizer, text: str):
  ids = _with_eos(tokenizer, _bos_prompt(tokenizer, text))
  return ids, [1] * len(ids)


def encode_row(tokenizer, fields: dict, fmt: str, d, shape: TurnShape | None = None):
  """(token ids, loss mask) of one row in format `fmt`; RowError if the row is unusable."""
  if fmt == "chat":
    messages = chat_messages(fields.get(d.messages_column), d.messages_column, d.system_prompt)
    return encode_chat(tokenizer, messages, d.completion_only, d.seq_len, shape)
  if fmt == "prompt_completion":
    prompt = text_field(fields, d.prompt_column)
    completion = text_field(fields, d.completion_column)
    return encode_prompt_completion(tokenizer, prompt, completion, d.completion_only)
  return encode_text(tokenizer, text_field(fields, d.text_column))


def _targets(mask: np.ndarray) -> int:
  # The first token of a document is never a target: nothing before it predicts it.
  return int(mask[1:].sum())


def check_length(ids: list[int], mask: list[int], seq_len: int, fmt: str) -> bool:
  """Raise RowError if the document trains on nothing (before or after truncation); True if cut."""
  m = np.asarray(mask, np.int32)
  if _targets(m) == 0:
    raise RowError("no loss tokens: the row has nothing to train on")
  if len(ids) <= seq_len:
    return False
  if _targets(m[:seq_len]) == 0:
    first = int(np.argmax(m[1:])) + 1
    what = "the prompt alone" if fmt == "prompt_completion" else "the text before the first assistant token"
    raise RowError(
      f"{what} is {first} tokens, longer than data.seq_len={seq_len} allows: truncation "
      "removed the whole completion, leaving no loss tokens (raise seq_len or shorten the prompt)"
    )
  return True


def build(rows: dict[str, list[Row]], d, tokenizer, bad: BadRows):
  """Splits of SFT arrays from rows per split (see `jaxtune.data.build`)."""
  first = rows[next(iter(rows))]  # train, or the only split when scoring a file
  fmt = d.sft_format
  if fmt == "auto":
    fmt = detect_format(first[0].fields if first else {}, d)
  if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
    raise DataError(f"{d.source}: sft_format='chat' but the tokenizer has no chat template")
  shape = chat_shape(tokenizer, first, d) if fmt == "chat" and d.completion_only else None

  docs, examples, stats = {}, {}, {}
  for split, split_rows in rows.items():
    docs[split], examples[split] = [], []
    truncated = 0
    reasons = collections.Counter()
    def encode(r):
      ids, mask = encode_row(tokenizer, r.fields, fmt, d, shape)
      return ids, mask, check_length(ids, mask, d.seq_len, fmt)

    for r, (ids, mask, cut) in encoded_rows(split_rows, encode, bad, reasons):
      truncated += cut
      eid = len(examples[split])
      docs[split].append(packing.Document(np.asarray(ids, np.int32), np.asarray(mask, np.int32), eid))
      examples[split].append({**r.fields, **r.origin()})
    if not docs[split]:
      why = f"; skipped: {dict(reasons)}" if reasons else ""
      raise DataError(f"{d.source}: the {split} split has no usable rows "
                      f"({len(split_rows)} read, {len(split_rows) - len(docs[split])} bad{why})")
    stats[split] = {"rows": len(split_rows), "examples": len(docs[split]),
                    "skipped": len(split_rows) - len(docs[split]), "truncated": truncated}
    if truncated:
      log.warning("%s split: truncated %d of %d examples longer than data.seq_len=%d",
                  split, truncated, len(docs[split]), d.seq_len)

  if d.pack:
    length = d.seq_len
  else:
    longest = max(len(doc.input_ids) for ds in docs.values() for doc in ds)
    length = min(d.seq_len, -(-longest // 8) * 8)
  pad_id = pad_token_id(tokenizer)
  splits = {}
  for split, ds in docs.items():
    arrays, _ = (packing.pack if d.pack else packing.pad)(ds, length, pad_id)
    loss_tokens = int(_target_mask(arrays).sum())
    if loss_tokens == 0:
      raise DataError(f"{d.source}: the {split} split has no loss tokens after truncation to "
                      f"data.seq_len={d.seq_len}; nothing to train or evaluate on")
    splits[split] = Dataset(arrays)
    stats[split].update({"rows_out": len(splits[split]), "tokens": int(arrays["attention_mask"].sum()),
                         "loss_tokens": loss_tokens})
  return Splits(splits, examples=examples, stats={"format": fmt, "row_length": length, "splits": stats})


def _target_mask(a: dict[str, np.ndarray]) -> np.ndarray:
  """The targets `losses.causal_lm_loss` trains on: loss_mask within a segment, first tokens out."""
  seg = a["segment_ids"]
  return a["loss_mask"][:, 1:] * (seg[:, 1:] == seg[:, :-1])
