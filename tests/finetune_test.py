"""End-to-end fine-tuning: classification (tiny BERT) and chat SFT with LoRA (tiny Llama).

Tiny random models written by transformers in the test, with the real offline tokenizers, on
small generated data sets; plus `jaxtune eval` on a new file.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxtune import config as jt_config
from jaxtune import train
from jaxtune.cli import eval as eval_cli
from jaxtune.data import assets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

POSITIVE = ["good", "great", "wonderful", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible", "lifeless"]
FILLER = ["the", "film", "was", "really", "a", "story", "with", "plot", "actors", "quite"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    positive = bool(rng.integers(2))
    words = list(rng.choice(FILLER, size=5)) + [rng.choice(POSITIVE if positive else NEGATIVE)]
    rng.shuffle(words)
    rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
  return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  try:
    minilm = assets.minilm_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  out = tmp_path_factory.mktemp("tiny_bert")
  cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64)
  torch.manual_seed(0)
  transformers.BertModel(cfg).save_pretrained(out)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (minilm / name).exists():
      shutil.copy(minilm / name, out / name)
  return out


def classification_config(model_dir, data_file) -> "jt_config.ml_collections.ConfigDict":
  c = jt_config.default()
  c.model.source = str(model_dir)
  c.model.task = "seq_cls"
  c.model.compute_dtype = "float32"
  c.data.kind = "classification"
  c.data.source = str(data_file)
  c.data.seq_len = 16
  c.mesh.data = 1
  c.train.steps = 60
  c.train.batch_size = 16
  c.train.eval_every = 20
  c.train.log_every = 10
  c.train.progress = False
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 5
  c.checkpoint.best_metric = "eval/accuracy"
  c.checkpoint.best_mode = "max"
  c.export.enabled = True
  return c


def test_classification_learns_and_writes_results_errors_and_export(tiny_bert, tmp_path):
  data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(400, 0))
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(classification_config(tiny_bert, data), workdir)
  results = json.loads((workdir / "results.json").read_text())
  assert results["test"]["accuracy"] > 0.9, results["test"]
  for key in ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion",
              "f1/positive", "precision/negative"):
    assert key in results["test"], key
  assert results["best_step"] in (20, 40, 60)
  assert result["results"]["test"]["accuracy"] == results["test"]["accuracy"]
  errors = [json.loads(x) for x in (workdir / "errors.jsonl").read_text().splitlines()]
  wrong = sum(results["test"]["confusion"][i][j] for i in range(2) for j in range(2) if i != j)
  assert len(errors) == wrong
  assert all({"text", "label", "predicted", "row"} <= set(e) for e in errors)

  # TensorBoard: a confusion matrix per validation, the test split's at the last step, where
  # its test/* scalars are too.
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(workdir / "tb"), size_guidance={"images": 0})
  acc.Reload()
  assert [e.step for e in acc.Images("eval/confusion_matrix")] == [20, 40, 60]
  (test_image,) = acc.Images("test/confusion_matrix")
  assert test_image.step == 60 and test_image.encoded_image_string.startswith(b"\x89PNG")
  for key in ("accuracy", "f1_macro", "f1/positive", "loss"):
    (point,) = acc.Scalars(f"test/{key}")
    assert point.step == 60 and point.value == pytest.approx(results["test"][key], rel=1e-6)

  # The exported directory is a transformers sequence classifier with the run's labels.
  model = transformers.AutoModelForSequenceClassification.from_pretrained(workdir / "export")
  assert model.config.id2label == {0: "negative", 1: "positive"}

  # jaxtune eval on a new file: same metric keys as results.json.
  fresh = write_jsonl(tmp_path / "fresh.jsonl", sentiment_rows(50, 1))
  out = eval_cli.evaluate_file(workdir, str(fresh), name="fresh")
  saved = json.loads((workdir / "eval_fresh.json").read_text())
  assert saved["accuracy"] == out["accuracy"] > 0.85
  assert set(results["test"]) <= set(saved)


def test_mean_pooled_classifier_exports_a_sentence_transformers_directory(tiny_bert, tmp_path):
  from jaxtune import export, hf, predict

  data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(200, 3))
  workdir = tmp_path / "run"
  cfg = classification_config(tiny_bert, data)
  cfg.model.pooling = "mean"
  results = train.train_and_evaluate(cfg, workdir)["results"]
  assert results["test"]["accuracy"] > 0.85, results["test"]
  out = workdir / "export"
  assert json.loads((out / "modules.json").read_text())[2]["path"] == "2_Dense"

  # The export, read back with its pooling, gives the run's own probabilities.
  texts = ["a really wonderful film", "the plot was dull and lifeless"]
  got = predict.classify(workdir, texts)
  assert [label for label, _ in got] == ["positive", "negative"]
  model = hf.load(out, task="seq_cls", pooling="mean")
  tok = hf.load_tokenizer(out)
  enc = tok(texts, padding="longest", return_tensors="np")
  logits = np.asarray(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(probs.max(-1), [p for _, p in got], atol=1e-5)
  assert export.load_run(workdir).model.config.pooling == "mean"

  # A run written before model.pooling existed reads it as the default it ran with.
  stored = json.loads((workdir / "config.json").read_text())
  del stored["model"]["pooling"]
  (workdir / "config.json").write_text(json.dumps(stored))
  assert jt_config.read_run_config(workdir).model.pooling == "cls"


def test_bad_row_names_file_and_row(tiny_bert, tmp_path):
  rows = sentiment_rows(60, 2)
  rows[7] = {"text": "", "label": "positive"}
  data = write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(ValueError, match=r"bad\.jsonl.*8"):
    train.train_and_evaluate(classification_config(tiny_bert, data), tmp_path / "run")


def test_chat_sft_with_lora_lowers_eval_loss(tmp_path):
  try:
    gguf = assets.smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  model_dir = tmp_path / "tiny_llama"
  cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(model_dir)
  greet = ["hi there", "hello friend", "good morning"]
  rows = [{"messages": [{"role": "user", "content": greet[i % 3]},
                        {"role": "assistant", "content": "hello! how are you today?"},
                        {"role": "user", "content": f"fine, number {i}"},
                        {"role": "assistant", "content": "glad to hear it."}]}
          for i in range(120)]
  data = write_jsonl(tmp_path / "chats.jsonl", rows)
  c = jt_config.default()
  c.model.source = str(model_dir)
  c.model.compute_dtype = "float32"
  c.data.kind = "sft"
  c.data.source = str(data)
  c.data.tokenizer = str(gguf)
  c.data.sft_format = "chat"
  c.data.pack = True
  c.data.seq_len = 128
  c.lora.rank = 8
  c.mesh.data = 1
  c.train.steps = 40
  c.train.batch_size = 4
  c.train.eval_every = 0
  c.train.eval_at_start = True
  c.train.progress = False
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 4
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, workdir)
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
  assert rows[0]["step"] == 0 and len(evals) >= 2
  # Rank-8 adapters over a random frozen base: learning shows, slowly (~0.6 nats in 40 steps).
  assert evals[-1] < evals[0] - 0.3, evals


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
