"""Prompt rows -> left-aligned prompt token arrays, for objectives that generate their own
answers (GRPO: `jaxtune.objectives.grpo`), `data.kind='prompts'`.

A row has a prompt in `data.prompt_column`:
- plain text: the tokenizer's encoding with its BOS (a trailing EOS some post-processors add is
  dropped: the answer follows); with `data.sft_format='chat'` the text becomes one user message;
- chat: a list of {role, content} messages, rendered with the
  tokenizer's chat template (jaxtune's sandbox, templates.py) and its generation prompt, so the
  model answers as the assistant. `data.system_prompt` is prepended as in SFT.

A prompt longer than `data.seq_len` keeps its last seq_len tokens (the end nearest the answer).
Bad rows (missing, empty or non-text prompt, malformed messages, a template that fails) go to
`BadRows` through the one bad-row loop (`classification.encoded_rows`).

Arrays per split: `input_ids` [N, L] right padded with the pad token, `attention_mask`, and
`example_id` indexing `Splits.examples[split]`, which keeps each row's prompt as read (text or
messages): reward functions see the prompt as the user wrote it.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from jaxtune.data import sft, templates
from jaxtune.data.classification import RowError, encoded_rows, pad_token_id, text_field
from jaxtune.data.pipeline import Dataset, Splits
from jaxtune.data.readers import BadRows, DataError, Row


def encode_prompt(tokenizer, value, d) -> list[int]:
  """Token ids of one prompt (see the module docstring); RowError when it is unusable."""
  column = d.prompt_column
  if not isinstance(value, list) and d.sft_format != "chat":
    text = text_field({column: value}, column)
    ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
    if len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
      ids.pop()
    return ids
  if not isinstance(value, list):
    messages = [{"role": "user", "content": text_field({column: value}, column)}]
    if d.system_prompt:
      messages.insert(0, {"role": "system", "content": d.system_prompt})
  else:
    messages = sft.chat_messages(value, column, d.system_prompt)
  if messages[-1]["role"] == "assistant":
    raise RowError(f"column {column!r} ends with an assistant message: the prompt must end "
                   "with the turn the model answers")
  if not getattr(tokenizer, "chat_template", None):
    raise DataError(f"{d.source}: chat prompts need a tokenizer with a chat template")
  try:
    text = templates.render(tokenizer, messages, add_generation_prompt=True)
  except templates.TemplateRejected as e:
    raise RowError(str(e)) from e
  return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def build(rows: dict[str, list[Row]], d, tokenizer, bad: BadRows) -> Splits:
  """Splits of prompt arrays from rows per split (see `jaxtune.data.build`)."""
  prompts, examples, stats = {}, {}, {}
  for split, split_rows in rows.items():
    prompts[split], examples[split] = [], []
    reasons, truncated = collections.Counter(), 0
    for r, ids in encoded_rows(split_rows, lambda r: _encode(tokenizer, r, d), bad, reasons):
      truncated += len(ids) > d.seq_len
      prompts[split].append(ids[-d.seq_len:])
      examples[split].append({"prompt": r.fields[d.prompt_column], **r.origin()})
    if not prompts[split]:
      why = f"; skipped: {dict(reasons)}" if reasons else ""
      raise DataError(f"{d.source}: the {split} split has no usable prompts ({len(split_rows)} read{why})")
    stats[split] = {"rows": len(split_rows), "examples": len(prompts[split]),
                    "skipped": len(split_rows) - len(prompts[split]), "truncated": truncated}
    if truncated:
      logging.getLogger(__name__).warning(
        "%s split: %d of %d prompts longer than data.seq_len=%d keep their last tokens",
        split, truncated, len(prompts[split]), d.seq_len)
  longest = max(len(p) for ps in prompts.values() for p in ps)
  length = min(d.seq_len, -(-longest // 8) * 8)
  pad = pad_token_id(tokenizer)
  splits = {}
  for split, ps in prompts.items():
    ids = np.full((len(ps), length), pad, np.int32)
    mask = np.zeros((len(ps), length), np.int32)
    for i, p in enumerate(ps):
      ids[i, :len(p)], mask[i, :len(p)] = p, 1
    splits[split] = Dataset({"input_ids": ids, "attention_mask": mask,
                             "example_id": np.arange(len(ps), dtype=np.int32)})
    stats[split]["tokens"] = int(mask.sum())
  return Splits(splits, examples=examples, stats={"row_length": length, "splits": stats})


def _encode(tokenizer, r: Row, d) -> list[int]:
  if d.prompt_column not in r.fields:
    raise RowError(f"missing column {d.prompt_column!r} (row has {sorted(r.fields)})")
  ids = encode_prompt(tokenizer, r.fields[d.prompt_column], d)
  if not ids:
    raise RowError(f"column {d.prompt_column!r} encodes to no tokens")
  return ids


def prompt_ids(ds: Dataset, rows: np.ndarray) -> list[list[int]]:
  """The prompts of rows `rows` of a prompts split, as token id lists without padding."""
  ids, mask = ds.arrays["input_ids"][rows], ds.arrays["attention_mask"][rows].astype(bool)
  return [[int(t) for t in i[m]] for i, m in zip(ids, mask, strict=True)]
