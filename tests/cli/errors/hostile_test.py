"""Battery, hostile files: chat templates that hang, flood or raise, malformed safetensors
headers, sharded indexes that point out of the model folder, and `export --dtype=int8`.

Each case runs the real command and expects one line `jaxtune <sub>: error: ...` naming the file
(and tensor, limit, flag or key), exit 2, no traceback, and nothing changed outside the run's
own workdir. The malformed files are written by hand here.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from tests.cli.errors.harness import CONFIGS, Snapshot, expect_error, run

SLOW = "{% set x = range(99999)|list %}{% for a in x %}{% for b in x %}{% endfor %}{% endfor %}"
HUGE = "{% for m in messages %}{% for i in range(99999) %}{{ m.content * 1000 }}{% endfor %}{% endfor %}"
RAISES = "{{ raise_exception('this template takes no system prompt') }}"
CONV = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]


def tokenizer_dir(path, template: str, *, in_config: bool = False):
  """A byte-level tokenizer whose chat template is `template`, in chat_template.jinja or (as
  older checkpoints have it) in tokenizer_config.json."""
  from tests.data.conftest import byte_tokenizer

  byte_tokenizer(chat_template=template).save_pretrained(str(path))
  if in_config:
    (path / "chat_template.jinja").unlink()
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
  return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A tiny Llama in HF format (config.json, model.safetensors) with a byte tokenizer."""
  from jaxtune import hf
  from jaxtune.models import presets

  path = tmp_path_factory.mktemp("tiny") / "model"
  hf.save(presets.init("tiny-llama"), path)
  tokenizer_dir(path, "{% for m in messages %}{{ m.content }}{% endfor %}")
  return path


def sft_train(tmp_path, tok: str, *extra: str):
  rows = tmp_path / "rows.jsonl"
  rows.write_text("".join(json.dumps({"messages": CONV}) + "\n" for _ in range(8)))
  work = tmp_path / "work"
  snap = Snapshot(tmp_path)
  result = run("train", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={work}",
               "--config.data.kind=sft", f"--config.data.source={rows}",
               f"--config.data.tokenizer={tok}", "--config.data.seq_len=32", *extra)
  return result, snap, work


# ---------------------------------------------------------------------------- chat templates


@pytest.mark.parametrize("template,in_config,words", [
  (SLOW, True, ["tokenizer_config.json", "time limit"]),
  (HUGE, False, ["chat_template.jinja", "output-size limit"]),
], ids=["slow loop in tokenizer_config.json", "huge output"])
def test_train_sft_hostile_template(tmp_path, template, in_config, words):
  tok = tokenizer_dir(tmp_path / "tok", template, in_config=in_config)
  result, snap, work = sft_train(tmp_path, str(tok))
  expect_error(result, "train", str(tok), *words, "chat template")
  snap.assert_unchanged(except_under=(work,))


def test_train_sft_template_that_raises(tmp_path):
  tok = tokenizer_dir(tmp_path / "tok", RAISES)
  result, snap, work = sft_train(tmp_path, str(tok))
  expect_error(result, "train", "rows.jsonl, row 1", "rejected the conversation",
               "takes no system prompt", str(tok / "chat_template.jinja"))
  snap.assert_unchanged(except_under=(work,))


@pytest.mark.parametrize("template,words", [
  (SLOW, ["time limit"]),
  ("{% set s = 'x' * 999999 %}{% for i in range(99999) %}{{ s }}{% endfor %}", ["output-size limit"]),
  (RAISES, ["rejected the conversation", "takes no system prompt"]),
], ids=["slow loop", "huge output", "raises"])
def test_generate_chat_hostile_template(tmp_path, model_dir, template, words):
  model = tmp_path / "model"
  shutil.copytree(model_dir, model)
  (model / "chat_template.jinja").write_text(template)
  snap = Snapshot(tmp_path)
  result = run("generate", f"--model={model}", "--prompt=hi", "--chat", "--max_new_tokens=2")
  expect_error(result, "generate", str(model / "chat_template.jinja"), *words)
  snap.assert_unchanged()


# ---------------------------------------------------------------------------- safetensors


def header_file(path, header, data: bytes = b"", length: int | None = None):
  blob = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)


W = "model.embed_tokens.weight"
F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED = {
  "header a JSON list": ([F32], b"\0" * 8, None, ["header is a JSON list"]),
  "entry not an object": ({W: [0, 8]}, b"\0" * 8, None, [W, "JSON list, not an object"]),
  "no data_offsets": ({W: {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, [W, "lacks data_offsets"]),
  "malformed data_offsets": ({W: {**F32, "data_offsets": "0-8"}}, b"\0" * 8, None,
                             [W, "data_offsets '0-8' is not [begin, end]"]),
  "offsets past the end": ({W: {**F32, "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None,
                           ["truncated", W]),
  "overlapping": ({W: {**F32, "shape": [4], "data_offsets": [0, 16]}, "x": {**F32, "data_offsets": [8, 16]}},
                  b"\0" * 16, None, [W, "'x' overlap"]),
  "unknown dtype": ({W: {**F32, "dtype": "Q4"}}, b"\0" * 8, None, [W, "unknown dtype 'Q4'"]),
  "header length past the file": ({W: F32}, b"\0" * 8, 1 << 40, ["header length 1099511627776 exceeds"]),
  "shape against bytes": ({W: {**F32, "shape": [3, 3]}}, b"\0" * 8, None,
                          [W, "has 8 bytes, but shape (3, 3) F32 needs 36"]),
}


@pytest.mark.parametrize("header,data,length,words", MALFORMED.values(), ids=MALFORMED.keys())
def test_generate_refuses_malformed_safetensors(tmp_path, model_dir, header, data, length, words):
  model = tmp_path / "model"
  shutil.copytree(model_dir, model)
  header_file(model / "model.safetensors", header, data, length)
  snap = Snapshot(tmp_path)
  result = run("generate", f"--model={model}", "--prompt=hi", "--max_new_tokens=2")
  expect_error(result, "generate", str(model / "model.safetensors"), *words)
  snap.assert_unchanged()


def test_train_refuses_malformed_safetensors_as_model_source(tmp_path, model_dir):
  model = tmp_path / "model"
  shutil.copytree(model_dir, model)
  header_file(model / "model.safetensors", [F32], b"\0" * 8)
  work = tmp_path / "work"
  snap = Snapshot(tmp_path)
  result = run("train", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={work}",
               f"--config.model.source={model}")
  expect_error(result, "train", str(model / "model.safetensors"), "header is a JSON list")
  snap.assert_unchanged(except_under=(work,))


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_generate_refuses_an_index_pointing_outside_the_model_folder(tmp_path, model_dir, how):
  model = tmp_path / "model"
  shutil.copytree(model_dir, model)
  secret = tmp_path / "secret.safetensors"
  (model / "model.safetensors").rename(secret)
  shard = {"parent": "../secret.safetensors", "absolute": str(secret), "symlink": "weights.safetensors"}[how]
  if how == "symlink":
    (model / "weights.safetensors").symlink_to(secret)
  index = model / "model.safetensors.index.json"
  index.write_text(json.dumps({"weight_map": {W: shard}}))
  snap = Snapshot(tmp_path)
  result = run("generate", f"--model={model}", "--prompt=hi", "--max_new_tokens=2")
  expect_error(result, "generate", str(index), W, "points outside the model folder")
  snap.assert_unchanged()


# ---------------------------------------------------------------------------- export --dtype


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  work = tmp_path_factory.mktemp("run") / "work"
  result = run("train", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={work}",
               "--config.train.steps=4", "--config.train.eval_every=4",
               "--config.checkpoint.every_steps=4", "--config.data.train_rows=64",
               "--config.optim.warmup_steps=1")
  assert result.returncode == 0, str(result)
  return work


@pytest.mark.parametrize("dtype", ["int8", "float64x"])
def test_export_refuses_a_non_float_dtype(tmp_path, finished_run, dtype):
  out = tmp_path / "out"
  snap = Snapshot(finished_run, tmp_path)
  result = run("export", f"--workdir={finished_run}", f"--out={out}", f"--dtype={dtype}")
  expect_error(result, "export", f"--dtype='{dtype}'", "float32, bfloat16, float16")
  snap.assert_unchanged()
  assert not out.exists()


def test_train_refuses_a_non_float_export_dtype(tmp_path):
  work = tmp_path / "work"
  snap = Snapshot(tmp_path)
  result = run("train", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={work}",
               "--config.export.enabled=True", "--config.export.dtype=int8")
  expect_error(result, "train", "export.dtype='int8'", "float32, bfloat16, float16")
  snap.assert_unchanged(except_under=(work,))
