"""LLMs as classifiers: a decoder with LoRA and a classification head, exported (LoRA merged)
as transformers' `...ForSequenceClassification`, answers in transformers' batched
text-classification pipeline as `jaxtune predict` does.

A tiny random Llama / Qwen3 written by transformers in the test (its config has no pad id, as
SmolLM2's and Qwen's checkpoints often have not), with the real SmolLM2 tokenizer from its GGUF
file (pad = EOS = <|im_end|>). Decoders score the last token that is not the pad id, so the
model's pad id must be the one the rows are padded with, and the export must carry it in
config.json, or transformers refuses batches of more than one text.
"""

import numpy as np
import pytest

from jaxtune import predict, train
from jaxtune.data import assets, classification
from jaxtune.data import load_tokenizer as jaxtune_tokenizer
from tests.finetune_test import classification_config, sentiment_rows, write_jsonl

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # two short training runs with exports
transformers = pytest.importorskip("transformers")

FAMILIES = {
  "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, "LlamaForSequenceClassification"),
  "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, "Qwen3ForSequenceClassification"),
}


def tiny_decoder(out, family: str):
  config_cls, model_cls, _ = FAMILIES[family]
  extra = {"head_dim": 8} if family == "qwen3" else {}
  cfg = config_cls(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                   tie_word_embeddings=True, **extra)
  torch.manual_seed(0)
  model_cls(cfg).save_pretrained(out)
  return out


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_lora_decoder_classifier_exports_what_the_pipeline_batches_alike(tmp_path, family):
  try:
    gguf = assets.smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  source = tiny_decoder(tmp_path / family, family)
  data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(160, 0))
  c = classification_config(source, data)
  c.data.tokenizer = str(gguf)
  c.data.seq_len = 24
  c.train.steps, c.train.eval_every = 30, 0
  c.lora.rank, c.lora.alpha = 4, 8.0
  c.export.merge_lora = True
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, workdir)

  # The rows are padded right with the tokenizer's pad (SmolLM2's is its EOS, <|im_end|>), and
  # the model, whose config.json had no pad id, now pools by that id: the last real token of
  # each row is scored.
  tok = jaxtune_tokenizer(str(gguf))
  pad = classification.pad_token_id(tok)
  assert pad == tok.pad_token_id == tok.eos_token_id == 2
  export = workdir / "export"
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(export)
  assert type(hf_model).__name__ == FAMILIES[family][2]
  assert hf_model.config.pad_token_id == pad
  assert hf_model.config.id2label == {0: "negative", 1: "positive"}
  assert not any("lora" in k for k in hf_model.state_dict())  # merged

  # Texts of different lengths, so the pipeline's batches pad: the same labels and scores.
  texts = [r["text"] for r in sentiment_rows(6, 5)] + ["good", "the film was dull and boring really",
                                                     "a lovely story with brilliant actors, quite superb"]
  want = predict.classify(workdir, texts)
  pipe = transformers.pipeline("text-classification", model=str(export), device="cpu")
  assert pipe.tokenizer.pad_token_id == pad
  got = pipe(texts, batch_size=4, truncation=True)
  assert [g["label"] for g in got] == [label for label, _ in want]
  np.testing.assert_allclose([g["score"] for g in got], [p for _, p in want], atol=2e-5)
  one_by_one = pipe(texts, batch_size=1)  # padding changes nothing: the pad is never scored
  np.testing.assert_allclose([g["score"] for g in one_by_one], [g["score"] for g in got], atol=2e-5)
