"""Preference rows -> chosen and rejected token arrays with a loss mask on the answers only.

A row has a prompt and a chosen and a rejected answer (columns `prompt`, `chosen`, `rejected`
by default), as TRL's preference data sets do:
- plain text: three strings. Each sequence is the prompt (with the tokenizer's BOS if it adds
  one), then the answer and EOS, as sft.py's prompt_completion format; the loss falls on the
  answer and EOS.
- chat: the prompt is a list of {role, content} messages (or a string: one user message) and
  each answer a list of messages holding the assistant turn (or a string: one assistant
  message). prompt + answer is rendered with the tokenizer's chat template (jaxtune's sandbox,
  templates.py); the loss falls on the answer's assistant turns, end-of-turn token included,
  found as sft.py finds them (prefix renderings, then token offsets). Assistant turns inside
  the prompt are context, not trained on. A row is chat when any of the three is a list.

Truncation to `seq_len`, decided per pair (its two sequences keep the same context): when
prompt + the longer answer does not fit, the prompt keeps its last max(seq_len - longer answer,
min_prompt_len) tokens (cut from the LEFT, keeping the end nearest the answer, and a leading
BOS), and each answer keeps its first seq_len - prompt tokens (cut from the RIGHT, so a cut
answer loses its EOS). min_prompt_len defaults to seq_len // 2.

Bad rows (missing or empty column, malformed messages, no assistant turn, a template that
renders no answer) go to `BadRows` as in sft.py: with on_bad_row='error' one DataError naming
the file, the row and the reason.

The arrays feed `objectives.dpo_losses.sequence_logps(logits, input_ids, loss_mask)`.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from jaxtune.data import sft, templates
from jaxtune.data.classification import RowError, encoded_rows, pad_token_id, text_field
from jaxtune.data.readers import BadRows, DataError, Row
from jaxtune.errors import ConfigError

log = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")
KEYS = tuple(f"{s}_{k}" for s in SIDES for k in ("input_ids", "attention_mask", "loss_mask"))


def _messages(value, column: str, default_role: str, system_prompt: str = "") -> list[dict]:
  if isinstance(value, str):
    text = text_field({column: value}, column)
    msgs = [{"role": default_role, "content": text}]
    if system_prompt:
      msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs
  return sft.chat_messages(value, column, system_prompt)


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
  try:
    return templates.render(tokenizer, messages, add_generation_prompt=generation_prompt)
  except templates.TemplateRejected as e:
    raise RowError(str(e)) from e


def _encode_chat(tokenizer, prompt: list[dict], answer: list[dict], column: str
                 ) -> tuple[list[int], list[int], list[int]]:
  """(prompt ids, answer ids, answer loss mask) of prompt + answer rendered as one chat."""
  if not any(m["role"] == "assistant" for m in answer):
    raise RowError(f"column {column!r} has no assistant message: nothing to learn")
  messages = prompt + answer
  prefix = _render(tokenizer, prompt, True)
  full, spans = sft.assistant_spans(tokenizer, messages)
  if not full.startswith(prefix):
    raise RowError("the chat template does not render the prompt as a prefix of prompt + answer, "
                   "so the answer cannot be located")
  spans = [(s, e) for s, e in spans if s >= len(prefix)]
  if not spans:
    raise RowError(f"the chat template rendered no assistant text for column {column!r}")
  if not getattr(tokenizer, "is_fast", False):
    raise DataError("chat preference rows need a fast (tokenizers-backed) tokenizer for offsets")
  enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
  ids = list(enc["input_ids"])
  mask = sft.span_mask(np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2), spans, len(full))
  first = int(np.argmax(mask)) if mask.any() else len(ids)
  return ids[:first], ids[first:], mask[first:].tolist()


def _encode_text(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int], list[int]]:
  ids, mask = sft.encode_prompt_completion(tokenizer, prompt, answer, completion_only=True)
  n = len(ids) - sum(mask)
  return ids[:n], ids[n:], mask[n:]


def encode_pair(tokenizer, fields: dict, *, seq_len: int, min_prompt_len: int | None = None,
                columns: tuple[str, str, str] = ("prompt", "chosen", "rejected"),
                system_prompt: str = "") -> tuple[dict[str, list[int]], bool]:
  """({'chosen_input_ids', 'chosen_loss_mask', 'rejected_...'}, truncated) of one row."""
  pc, cc, rc = columns
  for c in columns:
    if c not in fields:
      raise RowError(f"missing column {c!r} (row has {sorted(fields)})")
  if any(isinstance(fields[c], list) for c in columns):
    prompt = _messages(fields[pc], pc, "user", system_prompt)
    parts = {s: _encode_chat(tokenizer, prompt, _messages(fields[c], c, "assistant"), c)
             for s, c in zip(SIDES, (cc, rc))}
  else:
    prompt = text_field(fields, pc)
    parts = {s: _encode_text(tokenizer, prompt, text_field(fields, c)) for s, c in zip(SIDES, (cc, rc))}

  min_prompt_len = seq_len // 2 if min_prompt_len is None else min_prompt_len
  if not 0 <= min_prompt_len < seq_len:
    raise ConfigError(f"min_prompt_len={min_prompt_len}: expected 0 <= min_prompt_len < seq_len={seq_len}")
  longest = max(len(p) + len(a) for p, a, _ in parts.values())
  keep = max(seq_len - max(len(a) for _, a, _ in parts.values()), min_prompt_len)
  out = {}
  bos = tokenizer.bos_token_id
  for side, (p, a, m) in parts.items():
    if len(p) > keep:  # from the left, keeping a leading BOS
      p = ([p[0]] + p[len(p) - keep + 1:]) if bos is not None and p and p[0] == bos and keep else p[len(p) - keep:]
    room = seq_len - len(p)
    ids, mask = p + a[:room], [0] * len(p) + m[:room]
    if sum(mask[1:]) == 0:  # the first token is never a target: nothing predicts it
      raise RowError(f"the {side} answer has no tokens to train on after truncation to seq_len={seq_len}")
    out[f"{side}_input_ids"], out[f"{side}_loss_mask"] = ids, mask
  return out, longest > seq_len


def build(rows: list[Row], tokenizer, bad: BadRows, *, seq_len: int,
          min_prompt_len: int | None = None,
          columns: tuple[str, str, str] = ("prompt", "chosen", "rejected"),
          system_prompt: str = "", source: str = "data") -> tuple[dict[str, np.ndarray], list[dict], dict]:
  """(arrays, examples, stats) of `rows`: [N, L] int32 `{chosen,rejected}_{input_ids,
  attention_mask, loss_mask}`, right padded with the pad token to L (the longest sequence rounded
  up to 8, at most seq_len); each example's columns and origin; row counts."""
  seqs, examples, reasons = [], [], collections.Counter()
  truncated = 0
  def encode(r):
    return encode_pair(tokenizer, r.fields, seq_len=seq_len, min_prompt_len=min_prompt_len,
                       columns=columns, system_prompt=system_prompt)

  for r, (pair, cut) in encoded_rows(rows, encode, bad, reasons):
    truncated += cut
    seqs.append(pair)
    examples.append({**r.fields, **r.origin()})
  if not seqs:
    why = f"; skipped: {dict(reasons)}" if reasons else ""
    raise DataError(f"{source}: no usable preference rows ({len(rows)} read{why})")
  if truncated:
    log.warning("%s: truncated %d of %d preference pairs longer than seq_len=%d",
                source, truncated, len(seqs), seq_len)
  longest = max(len(s[f"{side}_input_ids"]) for s in seqs for side in SIDES)
  length = min(seq_len, -(-longest // 8) * 8)
  pad = pad_token_id(tokenizer)
  arrays = {k: np.zeros((len(seqs), length), np.int32) for k in KEYS}
  for k in KEYS:
    if k.endswith("input_ids"):
      arrays[k][:] = pad
  for i, s in enumerate(seqs):
    for side in SIDES:
      ids, mask = s[f"{side}_input_ids"], s[f"{side}_loss_mask"]
      arrays[f"{side}_input_ids"][i, :len(ids)] = ids
      arrays[f"{side}_attention_mask"][i, :len(ids)] = 1
      arrays[f"{side}_loss_mask"][i, :len(ids)] = mask
  stats = {"rows": len(rows), "examples": len(seqs), "skipped": len(rows) - len(seqs),
           "truncated": truncated, "row_length": length}
  return arrays, examples, stats


def build_splits(rows: dict[str, list[Row]], d, tokenizer, bad: BadRows):
  """Splits of preference arrays from rows per split (see `jaxtune.data.build`), every split
  padded to one width (the longest pair of any split, rounded up to 8) and given `example_id`
  [N] into its examples."""
  from jaxtune.data.pipeline import Dataset, Splits

  columns = (d.prompt_column, d.chosen_column, d.rejected_column)
  built, stats = {}, {}
  for split, split_rows in rows.items():
    try:
      built[split] = build(split_rows, tokenizer, bad, seq_len=d.seq_len, columns=columns,
                           system_prompt=d.system_prompt, source=d.source)
    except DataError as e:
      raise DataError(f"{e} in the {split} split") from e
    stats[split] = {k: v for k, v in built[split][2].items() if k != "row_length"}
  width = max(b[2]["row_length"] for b in built.values())
  pad = pad_token_id(tokenizer)
  splits, examples = {}, {}
  for split, (arrays, split_examples, _) in built.items():
    extra = width - next(iter(arrays.values())).shape[1]
    arrays = {k: np.pad(v, ((0, 0), (0, extra)), constant_values=pad if k.endswith("input_ids") else 0)
              for k, v in arrays.items()}
    arrays["example_id"] = np.arange(len(split_examples), dtype=np.int32)
    splits[split], examples[split] = Dataset(arrays), split_examples
    stats[split]["tokens"] = int(sum(arrays[f"{s}_attention_mask"].sum() for s in SIDES))
  return Splits(splits, examples=examples, stats={"format": "preference", "row_length": width,
                                                  "splits": stats})
