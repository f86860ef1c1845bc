"""Model cards: the base model's own metadata, and a README.md huggingface_hub parses.

Each card is written for a fake finished run (config, results.json, run.json in a workdir) and
read back with `huggingface_hub.ModelCard.load`; no local path may appear in it.
"""

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from jaxtune import card
from jaxtune import config as jt_config
from jaxtune.data import assets

gguf = pytest.importorskip("gguf")


def minilm_copy(tmp_path: Path) -> Path:
  """The metadata files of the real MiniLM (its README says sentence-transformers/...)."""
  try:
    src = assets.minilm_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  out = tmp_path / "models" / "minilm"
  out.mkdir(parents=True)
  for name in ("README.md", "config.json", "modules.json"):
    shutil.copy(src / name, out / name)
  return out


def write_gguf(path: Path, **strings) -> Path:
  """A metadata-only GGUF file: general.* keys as a converter writes them."""
  path.parent.mkdir(parents=True, exist_ok=True)
  w = gguf.GGUFWriter(str(path), "llama")
  for key, value in strings.items():
    if isinstance(value, list):
      w.add_array(key, value)
    elif isinstance(value, int):
      w.add_uint32(key, value)
    else:
      w.add_string(key, value)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def fake_run(tmp_path: Path, source: str, *, task: str, lora: int = 0, data: str = "") -> tuple:
  c = jt_config.default()
  c.model.source = source
  c.model.task = task
  c.data.kind = "classification" if task == "seq_cls" else "sft"
  c.data.source = data or str(tmp_path / "data" / "train.jsonl")
  c.data.tokenizer = source
  c.lora.rank = lora
  workdir = tmp_path / "runs" / "my-run"
  workdir.mkdir(parents=True)
  metrics = {"accuracy": 0.875, "loss": 0.31} if task == "seq_cls" else {"loss": 1.9}
  metrics["examples"] = 8
  (workdir / "results.json").write_text(json.dumps(
    {"best_step": 40, "val": {"loss": 0.3, "accuracy": 0.86}, "test": metrics}))
  (workdir / "run.json").write_text(json.dumps({"extra": {"data_stats": {"rows_read": 100}}}))
  return c, workdir


def load(tmp_path: Path, text: str) -> ModelCard:
  for bad in ("/work", "/tmp", str(Path.home()), str(tmp_path)):
    assert bad not in text, (bad, text)
  (tmp_path / "README.md").write_text(text)
  return ModelCard.load(tmp_path / "README.md")


def test_describe_a_sentence_transformers_directory(tmp_path):
  d = minilm_copy(tmp_path)
  s = card.describe_source(str(d))
  # The README's usage names the model itself; config.json's _name_or_path is its parent.
  assert s.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
  assert s.peft_base == str(d.resolve())  # PEFT loads the directory, which is here
  assert (s.license, s.language) == ("apache-2.0", ("en",))
  (d / "README.md").unlink()
  assert card.describe_source(str(d)).hub_id == "nreimers/MiniLM-L6-H384-uncased"


def test_describe_a_hub_cache_snapshot_and_a_hub_id(tmp_path):
  snap = tmp_path / "hub" / "models--Org--tiny-llama" / "snapshots" / "abc123"
  snap.mkdir(parents=True)
  (snap / "config.json").write_text(json.dumps({"_name_or_path": "/home/someone/ckpt"}))
  assert card.describe_source(str(snap)).hub_id == "Org/tiny-llama"
  s = card.describe_source("Org/not-local")
  assert (s.kind, s.hub_id, s.peft_base) == ("hub", "Org/not-local", "Org/not-local")


def test_describe_gguf_files(tmp_path):
  f = write_gguf(tmp_path / "m.gguf", **{
    "general.name": "Tiny", "general.license": "mit", "general.languages": ["en", "fr"],
    "general.source.repo_url": "https://huggingface.co/Org/tiny-src",
    "general.base_model.count": 1,
    "general.base_model.0.repo_url": "https://huggingface.co/Org/tiny-parent"})
  s = card.describe_source(str(f))
  assert (s.hub_id, s.peft_base, s.license, s.language, s.gguf_file) == (
    "Org/tiny-src", "Org/tiny-src", "mit", ("en", "fr"), "m.gguf")
  # Only the parent model known: a card's base_model, but not weights PEFT could load.
  f = write_gguf(tmp_path / "p.gguf", **{
    "general.name": "Tiny", "general.base_model.count": 1,
    "general.base_model.0.repo_url": "https://huggingface.co/Org/tiny-parent"})
  s = card.describe_source(str(f))
  assert (s.hub_id, s.peft_base) == ("Org/tiny-parent", None)


def test_describe_the_smollm2_gguf():
  """What the real asset carries: a name, an organization, a license; no repo URL."""
  try:
    f = assets.smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  s = card.describe_source(str(f))
  assert (s.hub_id, s.peft_base, s.license, s.language) == (None, None, "apache-2.0", ("en",))
  assert s.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_classifier_card_parses_with_every_field(tmp_path):
  c, workdir = fake_run(tmp_path, str(minilm_copy(tmp_path)), task="seq_cls",
                        data="rotten_tomatoes")
  mc = load(tmp_path, card.model_card(c, workdir, adapter=False))
  d = mc.data
  assert d.base_model == "sentence-transformers/all-MiniLM-L6-v2"
  assert (d.library_name, d.pipeline_tag, d.license) == (
    "transformers", "text-classification", "apache-2.0")
  assert d.language == ["en"]
  assert d.datasets == ["cornell-movie-review-data/rotten_tomatoes"]
  assert {"jaxtune", "text-classification"} <= set(d.tags)
  got = {(r.metric_type, r.metric_value, r.dataset_split, r.task_type) for r in d.eval_results}
  assert got == {("accuracy", 0.875, "test", "text-classification"),
                 ("loss", 0.31, "test", "text-classification")}
  assert 'pipeline("text-classification"' in mc.text and "truncation=True" in mc.text
  assert '"source": "minilm"' in mc.text  # the training config, paths cut to their last part


def test_adapter_card_on_a_gguf_base(tmp_path):
  f = write_gguf(tmp_path / "models" / "base.gguf", **{"general.name": "Tiny",
                                                       "general.license": "apache-2.0"})
  c, workdir = fake_run(tmp_path, str(f), task="causal_lm", lora=4)
  mc = load(tmp_path, card.model_card(c, workdir, adapter=True))
  d = mc.data
  assert d.base_model is None  # unknown: never a local path
  assert (d.library_name, d.pipeline_tag, d.license) == ("peft", "text-generation", "apache-2.0")
  assert {"jaxtune", "lora", "peft"} <= set(d.tags)
  assert d.datasets is None  # a local file is no hub data set
  assert 'gguf_file="base.gguf"' in mc.text and "PeftModel.from_pretrained" in mc.text
  assert [(r.metric_type, r.dataset_name) for r in d.eval_results] == [("loss", "train.jsonl")]


def test_card_for_a_hub_model_and_hub_data(tmp_path):
  c, workdir = fake_run(tmp_path, "Org/tiny-llama", task="causal_lm", lora=4,
                        data="Org/chats:train")
  mc = load(tmp_path, card.model_card(c, workdir, adapter=True))
  assert mc.data.base_model == "Org/tiny-llama" and mc.data.datasets == ["Org/chats"]
  assert 'AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")' in mc.text
