"""Preference rows -> chosen/rejected arrays: masks on the answers, chat templates, truncation,
bad rows. The chat rows are checked against transformers' own apply_chat_template."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtune.data import preference
from jaxtune.data.readers import BadRows, DataError, Row
from tests.data.conftest import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
  return byte_tokenizer()


def _masked(tok, arrays, side, i=0):
  ids, mask = arrays[f"{side}_input_ids"][i], arrays[f"{side}_loss_mask"][i]
  return tok.decode(ids[mask == 1])


def _rows(*fields):
  return [Row(f, "pairs.jsonl", i + 1) for i, f in enumerate(fields)]


def test_plain_text_masks_answer_and_eos(tok):
  rows = _rows({"prompt": "Review:", "chosen": " great film", "rejected": " dull"})
  arrays, examples, stats = preference.build(rows, tok, BadRows(), seq_len=64)
  assert set(arrays) == set(preference.KEYS) and stats["examples"] == 1
  assert _masked(tok, arrays, "chosen") == " great film</s>"
  assert _masked(tok, arrays, "rejected") == " dull</s>"
  n = len("Review:")
  np.testing.assert_array_equal(arrays["chosen_input_ids"][0, :n], arrays["rejected_input_ids"][0, :n])
  assert arrays["chosen_attention_mask"].sum() == n + len(" great film") + 1
  assert arrays["chosen_input_ids"].shape[1] % 8 == 0
  # padding is the pad token, outside the attention mask
  assert (arrays["rejected_input_ids"][0][arrays["rejected_attention_mask"][0] == 0] == tok.pad_token_id).all()
  assert examples[0]["row"] == 1


def test_chat_rows_match_transformers_template(tok):
  prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Earlier turn"}, {"role": "user", "content": "Film?"}]
  rows = _rows({"prompt": prompt, "chosen": [{"role": "assistant", "content": "Loved it."}],
                "rejected": "Hated it."})  # a string answer is one assistant message
  arrays, _, _ = preference.build(rows, tok, BadRows(), seq_len=256)
  for side, text in (("chosen", "Loved it."), ("rejected", "Hated it.")):
    msgs = prompt + [{"role": "assistant", "content": text}]
    want = tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
    start = len(tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))
    n = int(arrays[f"{side}_attention_mask"][0].sum())
    np.testing.assert_array_equal(arrays[f"{side}_input_ids"][0, :n], want)
    mask = arrays[f"{side}_loss_mask"][0]
    # only the answer's turn, end-of-turn token included, not the newline after it
    assert int(np.argmax(mask)) == start
    assert _masked(tok, arrays, side) == text + "<|im_end|>"


def test_truncation_prompt_from_left_answer_from_right(tok):
  prompt, chosen, rejected = "abcdefghij" * 3, "0123456789" * 2, "xyz"
  rows = _rows({"prompt": prompt, "chosen": chosen, "rejected": rejected})
  arrays, _, stats = preference.build(rows, tok, BadRows(), seq_len=24)
  assert stats["truncated"] == 1 and arrays["chosen_input_ids"].shape[1] == 24
  # prompt keeps max(24 - 21, 24 // 2) = 12 tokens: its last 12 characters
  for side in preference.SIDES:
    ids = arrays[f"{side}_input_ids"][0]
    assert tok.decode(ids[:12]) == prompt[-12:]
  assert _masked(tok, arrays, "chosen") == chosen[:12]  # the first 12, EOS cut off
  assert _masked(tok, arrays, "rejected") == "xyz</s>"
  # min_prompt_len=4: the prompt keeps max(24 - 21, 4) = 4 tokens, answers up to 20
  arrays, _, _ = preference.build(rows, tok, BadRows(), seq_len=24, min_prompt_len=4)
  assert tok.decode(arrays["chosen_input_ids"][0][:4]) == prompt[-4:]
  assert _masked(tok, arrays, "chosen") == chosen
  arrays, _, stats = preference.build(rows, tok, BadRows(), seq_len=64)
  assert stats["truncated"] == 0 and _masked(tok, arrays, "chosen") == chosen + "</s>"


def test_bad_rows_name_file_and_row(tok):
  rows = _rows({"prompt": "p", "chosen": "a", "rejected": "b"},
               {"prompt": "p", "chosen": "a"},
               {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
                "rejected": "b"},
               {"prompt": "p", "chosen": "   ", "rejected": "b"})
  with pytest.raises(DataError, match=r"pairs\.jsonl, row 2: missing column 'rejected'"):
    preference.build(rows, tok, BadRows("error"), seq_len=32)
  bad = BadRows("skip")
  arrays, examples, stats = preference.build(rows, tok, bad, seq_len=32)
  assert stats["examples"] == 1 and [s["row"] for s in bad.skipped] == [2, 3, 4]
  assert "no assistant message" in bad.skipped[1]["reason"]
  assert "empty text in column 'chosen'" in bad.skipped[2]["reason"]
  with pytest.raises(DataError, match="no usable preference rows"):
    preference.build(rows[1:], tok, BadRows("skip"), seq_len=32, source="pairs.jsonl")


def test_arrays_feed_sequence_logps(tok):
  import jax
  import jax.numpy as jnp

  from jaxtune.objectives.dpo_losses import sequence_logps

  rows = _rows({"prompt": "Q:", "chosen": " yes", "rejected": " no thanks"})
  a, _, _ = preference.build(rows, tok, BadRows(), seq_len=32)
  ids = jnp.asarray(a["chosen_input_ids"])
  logits = jax.random.normal(jax.random.key(0), ids.shape + (len(tok),))
  logps, counts = sequence_logps(logits, ids, jnp.asarray(a["chosen_loss_mask"]))
  assert float(counts[0]) == len(" yes") + 1
  logp = np.asarray(jax.nn.log_softmax(logits[0, :-1], -1))
  row = a["chosen_input_ids"][0]
  want = sum(float(logp[t - 1, row[t]]) for t in range(1, len(row)) if a["chosen_loss_mask"][0, t])
  assert float(logps[0]) == pytest.approx(want, rel=1e-6)
