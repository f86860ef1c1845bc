"""The real SmolLM2-135M-Instruct (GGUF) answers through `jaxtune.generate` with its chat template."""

import pytest

from jaxtune import finished_run, generate
from jaxtune.data import assets

pytest.importorskip("gguf")
pytestmark = pytest.mark.slow


def test_chat_greedy_answer_names_paris():
  try:
    path = str(assets.smollm2_gguf())
  except FileNotFoundError as e:
    pytest.skip(str(e))
  model, tok = finished_run.load_source(model=path)
  ids = generate.encode(tok, "What is the capital of France?", chat=True)
  assert tok.decode(ids).rstrip().endswith("assistant")  # the generation prompt is in place
  res = generate.Generator(model, pad_id=generate.pad_id(tok))(
    [ids], max_new_tokens=12, stop_ids=generate.stop_ids(tok, model.config, []))
  text = tok.decode(res.tokens[0], skip_special_tokens=True)
  assert "Paris" in text, text
  assert res.tokens[0][-1] in generate.stop_ids(tok, model.config, [])  # it ended by itself
