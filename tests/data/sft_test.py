"""SFT data: chat rendering with assistant-only loss, prompt/completion, text, and the errors
that explain why a row or a data set would train on nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtune import data
from jaxtune.data import sft
from jaxtune.data.readers import DataError
from tests.data.conftest import byte_tokenizer

CONV = [
  {"role": "user", "content": "Hi there, who are you?"},
  {"role": "assistant", "content": "I am a small model.\nNice to meet you!"},
  {"role": "user", "content": "Tell me a joke"},
  {"role": "assistant", "content": "Why did the chicken cross the road?"},
]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _runs(mask) -> list[tuple[int, int]]:
  """[start, end) of each run of ones."""
  m = np.concatenate([[0], np.asarray(mask), [0]])
  edges = np.flatnonzero(np.diff(m))
  return list(zip(edges[::2], edges[1::2]))


def _masked_texts(tok, ids, mask) -> list[str]:
  return [tok.decode(ids[s:e]) for s, e in _runs(mask)]


def _build(tmp_path, make_cfg, tok_dir, rows, **kw):
  kw.setdefault("split", "1,0")
  src = _jsonl(tmp_path / "train.jsonl", rows)
  cfg = make_cfg(kind="sft", tokenizer=tok_dir, source=src, validation_source=src, **kw)
  return data.build(cfg, tmp_path / "work")


# ----------------------------------------------------------------------------- chat


def test_smollm2_chat_loss_only_on_assistant_replies(smollm2_tokenizer):
  tok = smollm2_tokenizer
  shape = sft.probe_turn_shape(tok)
  assert shape is not None and shape.anchor == "<|im_start|>assistant\n" and shape.post == "<|im_end|>"
  for turn_shape in (shape, None):  # the linear search and the prefix-by-prefix rendering
    ids, mask = sft.encode_chat(tok, CONV, True, 512, turn_shape)
    assert _masked_texts(tok, ids, mask) == [CONV[1]["content"] + "<|im_end|>",
                                             CONV[3]["content"] + "<|im_end|>"]
    # Everything else, the default system prompt and the user turns included, is context.
    rest = tok.decode([t for t, m in zip(ids, mask) if not m])
    assert "You are a helpful AI assistant named SmolLM" in rest and CONV[2]["content"] in rest
    assert "chicken" not in rest


def test_smollm2_chat_build_end_to_end(tmp_path, make_cfg, smollm2_tokenizer, monkeypatch):
  monkeypatch.setattr(data, "load_tokenizer", lambda source: smollm2_tokenizer)
  rows = [{"messages": CONV}, {"messages": CONV[:2]}, {"messages": CONV[2:]}]
  s = _build(tmp_path, make_cfg, "smollm2", rows, system_prompt="Be brief.", seq_len=256)
  a = s["train"].arrays
  assert s.stats["format"] == "chat"
  assert set(a) == {"input_ids", "attention_mask", "loss_mask", "positions", "segment_ids", "example_id"}
  texts = _masked_texts(smollm2_tokenizer, a["input_ids"][0], a["loss_mask"][0])
  assert texts == [CONV[1]["content"] + "<|im_end|>", CONV[3]["content"] + "<|im_end|>"]
  assert "Be brief." in smollm2_tokenizer.decode(a["input_ids"][0])
  assert "You are a helpful AI" not in smollm2_tokenizer.decode(a["input_ids"][0])
  assert s.stats["train"]["loss_tokens"] == int(a["loss_mask"].sum())
  assert s.examples["train"][1]["messages"] == CONV[:2] and s.examples["train"][1]["row"] == 2


def test_template_that_is_not_message_local_falls_back_to_prefix_rendering():
  numbered = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' + loop.index|string + '\\n' "
              "+ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant ' + (messages|length + 1)|string + '\\n' }}{% endif %}")
  tok = byte_tokenizer(chat_template=numbered)
  shape = sft.probe_turn_shape(tok)
  text, _ = sft.assistant_spans(tok, CONV)
  assert sft.fast_spans(text, CONV, shape) is None  # the turn number breaks the probed anchor
  ids, mask = sft.encode_chat(tok, CONV, True, 512, shape)
  assert _masked_texts(tok, ids, mask) == [CONV[1]["content"] + "<|im_end|>", CONV[3]["content"] + "<|im_end|>"]


def test_template_without_assistant_turns_is_an_error_that_says_so(tmp_path, make_cfg):
  no_assistant = ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ '<|im_start|>' + m['role'] "
                  "+ '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}")
  path = tmp_path / "tok"
  byte_tokenizer(chat_template=no_assistant).save_pretrained(str(path))
  with pytest.raises(DataError, match=r"train\.jsonl, row 1: the chat template rendered no assistant tokens"):
    _build(tmp_path, make_cfg, str(path), [{"messages": CONV}])
  # Skipping every row still fails: the data set would train on nothing.
  with pytest.raises(DataError, match=r"no usable rows.*chat template rendered no assistant tokens"):
    _build(tmp_path, make_cfg, str(path), [{"messages": CONV}], on_bad_row="skip")


def test_hostile_template_stops_the_build_naming_its_file(tmp_path, make_cfg, monkeypatch):
  from jaxtune.data import templates
  from jaxtune.errors import TemplateError

  monkeypatch.setattr(templates, "TIME_LIMIT_S", 0.5)
  path = tmp_path / "tok"
  for template, limit in [
    ("{% set x = range(99999)|list %}{% for a in x %}{% for b in x %}{% endfor %}{% endfor %}",
     "time limit"),
    ("{% for m in messages %}{{ m.content * 10**9 }}{% endfor %}", "output-size limit"),
  ]:
    byte_tokenizer(chat_template=template).save_pretrained(str(path))
    # Not a bad row to skip: the template, not the data, is at fault.
    with pytest.raises(TemplateError, match=rf"{path}/\S+: the chat template hit the {limit}"):
      _build(tmp_path, make_cfg, str(path), [{"messages": CONV}], on_bad_row="skip")


def test_template_that_raises_rejects_the_row_naming_the_template(tmp_path, make_cfg):
  path = tmp_path / "tok"
  byte_tokenizer(chat_template="{{ raise_exception('only one turn') }}").save_pretrained(str(path))
  with pytest.raises(DataError, match=rf"row 1: the chat template rejected the conversation: "
                                      rf"TemplateError: only one turn \(template from {path}/"):
    _build(tmp_path, make_cfg, str(path), [{"messages": CONV}])


def test_tokenizer_without_chat_template(tmp_path, make_cfg):
  path = tmp_path / "tok"
  byte_tokenizer(chat_template=None).save_pretrained(str(path))
  with pytest.raises(DataError, match="tokenizer has no chat template"):
    _build(tmp_path, make_cfg, str(path), [{"messages": CONV}])


def test_chat_rows_without_assistant_or_with_bad_messages(tmp_path, make_cfg, causal_tok_dir):
  rows = [{"messages": CONV}, {"messages": CONV[:1]}, {"messages": [{"role": "robot", "content": "x"}]},
          {"messages": "not json"}]
  s = _build(tmp_path, make_cfg, causal_tok_dir, rows, on_bad_row="skip")
  assert len(s["train"]) == 1 and s.stats["skipped"] == 6  # 3 bad rows in each of 2 splits
  reasons = [json.loads(x)["reason"] for x in (tmp_path / "work" / "skipped_rows.jsonl").read_text().splitlines()]
  assert "no assistant message" in reasons[0] and "unknown role 'robot'" in reasons[1]
  assert "not a (JSON) list of messages" in reasons[2]


def test_chat_prompt_longer_than_seq_len(tmp_path, make_cfg, causal_tok_dir):
  long = [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "ok"}]
  with pytest.raises(DataError, match=r"row 2: the text before the first assistant token is \d+ tokens, "
                                      r"longer than data.seq_len=64"):
    _build(tmp_path, make_cfg, causal_tok_dir, [{"messages": CONV[:2]}, {"messages": long}], seq_len=64)


def test_chat_completion_only_false_trains_on_everything(tmp_path, make_cfg, causal_tok_dir):
  s = _build(tmp_path, make_cfg, causal_tok_dir, [{"messages": CONV}], completion_only=False)
  a = s["train"].arrays
  np.testing.assert_array_equal(a["loss_mask"], a["attention_mask"])


# ------------------------------------------------------------------ prompt / completion


def test_prompt_completion_loss_on_completion_and_eos(tmp_path, make_cfg, causal_tok_dir):
  from jaxtune.data import load_tokenizer

  tok = load_tokenizer(causal_tok_dir)
  rows = [{"prompt": "Q: 2+2?\nA:", "completion": " 4"}, {"prompt": "Say hi", "completion": " hi there"}]
  s = _build(tmp_path, make_cfg, causal_tok_dir, rows)
  a = s["train"].arrays
  assert s.stats["format"] == "prompt_completion"
  for i, r in enumerate(rows):
    assert _masked_texts(tok, a["input_ids"][i], a["loss_mask"][i]) == [r["completion"] + "</s>"]
    n = a["attention_mask"][i].sum()
    assert tok.decode(a["input_ids"][i, :n]) == r["prompt"] + r["completion"] + "</s>"
    np.testing.assert_array_equal(a["positions"][i, :n], np.arange(n))
  assert a["input_ids"].shape[1] == 16  # the longest (6 + 9 + 1 tokens), a multiple of 8
  s = _build(tmp_path, make_cfg, causal_tok_dir, rows, completion_only=False)
  np.testing.assert_array_equal(s["train"].arrays["loss_mask"], s["train"].arrays["attention_mask"])


def test_prompt_longer_than_seq_len_is_an_error(tmp_path, make_cfg, causal_tok_dir):
  rows = [{"prompt": "short", "completion": " ok"}, {"prompt": "p" * 40, "completion": " answer"}]
  with pytest.raises(DataError, match=r"train\.jsonl, row 2: the prompt alone is 40 tokens, longer than "
                                      r"data.seq_len=32 allows: truncation removed the whole completion"):
    _build(tmp_path, make_cfg, causal_tok_dir, rows, seq_len=32)
  s = _build(tmp_path, make_cfg, causal_tok_dir, rows, seq_len=32, on_bad_row="skip")
  assert len(s["train"]) == 1 and s.stats["skipped"] == 2
  with pytest.raises(DataError, match=r"no usable rows.*the prompt alone is N tokens"):
    _build(tmp_path, make_cfg, causal_tok_dir, rows[1:], seq_len=32, on_bad_row="skip")


def test_long_completion_is_truncated_and_counted(tmp_path, make_cfg, causal_tok_dir):
  rows = [{"prompt": "p", "completion": "c" * 50}, {"prompt": "q", "completion": "d"}]
  s = _build(tmp_path, make_cfg, causal_tok_dir, rows, seq_len=32)
  assert s.stats["train"]["truncated"] == 1 and s["train"].arrays["input_ids"].shape == (2, 32)
  assert s["train"].arrays["loss_mask"][0].sum() == 31


# ------------------------------------------------------------------------------ text


def test_text_format_trains_on_every_token_and_packs(tmp_path, make_cfg, causal_tok_dir):
  rows = [{"text": "one two three"}, {"text": "four"}, {"text": "five six"}]
  s = _build(tmp_path, make_cfg, causal_tok_dir, rows, seq_len=32)
  a = s["train"].arrays
  assert s.stats["format"] == "text"
  np.testing.assert_array_equal(a["loss_mask"], a["attention_mask"])
  assert (a["input_ids"][np.arange(3), a["attention_mask"].sum(1) - 1] == 257).all()  # </s>
  p = _build(tmp_path, make_cfg, causal_tok_dir, rows, seq_len=32, pack=True)
  b = p["train"].arrays
  assert b["input_ids"].shape == (1, 32)  # 14 + 5 + 9 tokens share one row
  np.testing.assert_array_equal(np.unique(b["segment_ids"]), [0, 1, 2, 3])
  assert b["example_id"].shape == (1, 32) and b["attention_mask"].sum() == a["attention_mask"].sum()
  # Each document's first token predicts nothing, packed or not: same loss tokens.
  assert p.stats["loss_tokens"] == s.stats["loss_tokens"] == 28 * 2 - 2 * 3


def test_auto_format_needs_known_columns(tmp_path, make_cfg, causal_tok_dir):
  with pytest.raises(DataError, match="cannot tell the SFT format"):
    _build(tmp_path, make_cfg, causal_tok_dir, [{"question": "a", "answer": "b"}])
  s = _build(tmp_path, make_cfg, causal_tok_dir, [{"question": "a", "answer": "b"}],
             prompt_column="question", completion_column="answer")
  assert s.stats["format"] == "prompt_completion"
