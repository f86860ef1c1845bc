"""Battery, issue 16 "validate up front": bad values, keys a run would ignore, best_metric,
labels against model.num_labels, CSV quoting and non-text values, through `jaxtune train`.

Config mistakes are refused before the workdir is created. Data mistakes are found while the
data is read, before any model is built or step compiled; by then the workdir holds at most the
run's config.json, and nothing outside it changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.errors.harness import CONFIGS, Snapshot, expect_error, run

TINY = f"--config={CONFIGS / 'tiny.py'}"

# (id, flags on configs/tiny.py, words of the error line): refused before anything is written.
CONFIG_CASES = [
  ("lr_nan", ["--config.optim.learning_rate=nan"], ["optim.learning_rate=nan", "finite"]),
  ("lr_negative", ["--config.optim.learning_rate=-0.001"], ["optim.learning_rate=-0.001", "> 0"]),
  ("weight_decay_negative", ["--config.optim.weight_decay=-0.1"], ["optim.weight_decay=-0.1", ">= 0"]),
  ("b1_one", ["--config.optim.b1=1.0"], ["optim.b1=1.0", "[0, 1)"]),
  ("b2_above_one", ["--config.optim.b2=1.5"], ["optim.b2=1.5", "[0, 1)"]),
  ("eps_zero", ["--config.optim.eps=0"], ["optim.eps=0", "> 0"]),
  ("clip_inf", ["--config.optim.grad_clip_norm=inf"], ["optim.grad_clip_norm=inf", "finite"]),
  ("warmup_past_steps", ["--config.optim.warmup_steps=100"], ["optim.warmup_steps=100", "total_steps=60"]),
  ("ema_decay_one", ["--config.optim.ema_decay=1.0"], ["optim.ema_decay=1.0", "[0, 1)"]),
  ("eval_batch_size_zero", ["--config.train.eval_batch_size=0"], ["train.eval_batch_size=0", ">= 1"]),
  ("every_steps_negative", ["--config.checkpoint.every_steps=-5"], ["checkpoint.every_steps=-5", ">= 0"]),
  ("keep_last_zero", ["--config.checkpoint.keep_last=0"], ["checkpoint.keep_last=0", ">= 1"]),
  ("keep_best_negative", ["--config.checkpoint.keep_best=-1"], ["checkpoint.keep_best=-1", ">= 0"]),
  ("log_every_zero", ["--config.train.log_every=0"], ["train.log_every=0", ">= 1"]),
  ("eval_every_negative", ["--config.train.eval_every=-1"], ["train.eval_every=-1", ">= 0"]),
  ("lora_rank_negative", ["--config.lora.rank=-1"], ["lora.rank=-1", ">= 0"]),
  ("lora_alpha_zero", ["--config.lora.rank=4", "--config.lora.alpha=0"], ["lora.alpha=0", "> 0"]),
  ("seq_len_one", ["--config.data.seq_len=1"], ["data.seq_len=1", ">= 2"]),
  ("best_metric_misspelt", ["--config.checkpoint.best_metric=eval/los"],
   ["checkpoint.best_metric='eval/los'", "eval/perplexity", "did you mean 'eval/loss'"]),
  ("best_metric_other_task", ["--config.checkpoint.best_metric=eval/accuracy"],
   ["checkpoint.best_metric='eval/accuracy'", "model.task='causal_lm' reports"]),
  ("source_on_synthetic", ["--config.data.source=mine.jsonl"],
   ["data.source='mine.jsonl'", "only read with data.kind='classification' or 'sft'"]),
  ("num_labels_on_causal_lm", ["--config.model.num_labels=3"], ["model.num_labels=3", "model.task='seq_cls'"]),
  ("lora_alpha_without_lora", ["--config.lora.alpha=32"], ["lora.alpha=32.0", "lora.rank > 0"]),
  ("momentum_on_adamw", ["--config.optim.momentum=0.9"], ["optim.momentum=0.9", "optim.name=sgd|rmsprop"]),
  ("text_samples_without_tokenizer", ["--config.train.text_samples=2"], ["train.text_samples=2", "ignore"]),
  ("preset_override_unknown", ["--config.model.config_overrides=bogus_dim=3"],
   ["preset tiny-llama with model.config_overrides", "bogus_dim"]),
  ("report_to_unknown", ["--config.report_to=tensorboard,mlfow"],
   ["report_to='tensorboard,mlfow'", "'mlfow'", "known: tensorboard, mlflow, wandb"]),
  ("tracking_without_tracker", ["--config.tracking.experiment=x"],
   ["tracking.experiment='x'", "only read with report_to=mlflow and/or wandb"]),
]


@pytest.mark.parametrize("flags, words", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_mistakes_are_refused_before_anything_is_written(tmp_path, flags, words):
  workdir = tmp_path / "run"
  snap = Snapshot(CONFIGS, tmp_path)
  result = run("train", TINY, f"--workdir={workdir}", *flags)
  expect_error(result, "train", *words)
  assert not workdir.exists(), sorted(p.name for p in workdir.iterdir())
  snap.assert_unchanged()


def test_tune_refuses_a_key_its_trials_would_ignore(tmp_path):
  workdir = tmp_path / "study"
  snap = Snapshot(CONFIGS, tmp_path)
  result = run("tune", TINY, f"--search={CONFIGS / 'search' / 'tiny.py'}", f"--workdir={workdir}",
               "--config.data.label_names=a,b")
  expect_error(result, "tune", "data.label_names='a,b'", "data.kind='classification'")
  assert not workdir.exists()
  snap.assert_unchanged()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
  from tests.data.conftest import byte_tokenizer

  path = tmp_path_factory.mktemp("tok")
  byte_tokenizer().save_pretrained(str(path))
  return path


def _jsonl(path: Path, rows: list) -> Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _classification(source: Path, tok: Path, *more: str) -> list[str]:
  return [TINY, "--config.model.task=seq_cls", "--config.data.kind=classification",
          f"--config.data.source={source}", f"--config.data.tokenizer={tok}",
          "--config.data.split=0.5,0.5", *more]


def _rows(n: int, labels) -> list[dict]:
  return [{"text": f"example {i}", "label": labels[i % len(labels)]} for i in range(n)]


# (id, file name, content (rows or raw text), extra flags, words): the data is at fault.
DATA_CASES = [
  ("batch_larger_than_train_split", "d.jsonl", _rows(8, ["neg", "pos"]), [],
   ["train.batch_size=16", "larger than the training set (4 examples)"]),
  ("label_id_past_num_labels", "d.jsonl", [*_rows(4, [0, 1]), {"text": "x", "label": 2}, *_rows(7, [0, 1])],
   ["--config.model.num_labels=2"], ["d.jsonl, row 5", "unknown label 2", "model.num_labels=2"]),
  ("named_labels_past_num_labels", "d.jsonl", _rows(12, ["neg", "pos", "mixed"]),
   ["--config.model.num_labels=2"], ["d.jsonl", "3 labels (mixed, neg, pos)", "model.num_labels=2"]),
  ("csv_unclosed_quote", "d.csv", 'text,label\nfine,pos\n"never closed,neg\nalso fine,pos\n', [],
   ["d.csv, row 3", "unbalanced quote", "never closed"]),
  ("csv_quote_swallows_rows", "d.csv", 'text,label\na,pos\n"stray,neg\nb,pos\n"c",neg\nd,pos\n', [],
   ["d.csv, row 3", "unbalanced quote", "lines 3-5"]),
  ("null_text", "d.jsonl", [*_rows(3, ["a", "b"]), {"text": None, "label": "a"}, *_rows(3, ["a", "b"])], [],
   ["d.jsonl, row 4", "column 'text' is null"]),
  ("number_text", "d.jsonl", [*_rows(4, ["a", "b"]), {"text": 3.5, "label": "a"}], [],
   ["d.jsonl, row 5", "column 'text' is not text: got float 3.5"]),
  ("list_text", "d.jsonl", [{"text": ["x", "y"], "label": "a"}, *_rows(4, ["a", "b"])], [],
   ["d.jsonl, row 1", "column 'text' is not text: got list"]),
  ("per_class_best_metric_unknown_label", "d.jsonl", _rows(40, ["neg", "pos"]),
   ["--config.checkpoint.best_metric=eval/f1/pso", "--config.checkpoint.best_mode=max"],
   ["checkpoint.best_metric='eval/f1/pso'", "did you mean 'eval/f1/pos'"]),
]


@pytest.mark.parametrize("name, content, flags, words", [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_data_mistakes_name_file_and_row_before_any_compile(tmp_path, tokenizer_dir, name, content,
                                                            flags, words):
  data = tmp_path / "data"
  data.mkdir()
  source = data / name
  if isinstance(content, str):
    source.write_text(content)
  else:
    _jsonl(source, content)
  workdir = tmp_path / "run"
  snap = Snapshot(CONFIGS, data, tokenizer_dir)
  result = run("train", *_classification(source, tokenizer_dir, *flags), f"--workdir={workdir}")
  expect_error(result, "train", *words)
  # Today train writes config.json before reading the data; nothing else may be there.
  assert {p.name for p in workdir.glob("*")} <= {"config.json"}
  snap.assert_unchanged()


def test_sft_completion_that_is_not_text_names_its_row(tmp_path, tokenizer_dir):
  source = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": 7},
                                           {"prompt": "q", "completion": "d"}])
  workdir = tmp_path / "run"
  snap = Snapshot(CONFIGS, source, tokenizer_dir)
  result = run("train", TINY, "--config.data.kind=sft", f"--config.data.source={source}",
               f"--config.data.tokenizer={tokenizer_dir}", "--config.data.split=0.5,0.5",
               f"--workdir={workdir}")
  expect_error(result, "train", "sft.jsonl, row 2", "column 'completion' is not text: got int 7")
  assert {p.name for p in workdir.glob("*")} <= {"config.json"}
  snap.assert_unchanged()


def test_data_audit_reports_the_unbalanced_quote_row(tmp_path):
  """`jaxtune data audit` reads files as training does: the stray quote is one unreadable row
  (file and row), and the rows after it are audited rather than swallowed."""
  source = tmp_path / "d.csv"
  source.write_text('text,label\n' + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(8))
                    + '"stray,a\n' + "".join(f"more {i},{'ab'[i % 2]}\n" for i in range(8)))
  out = tmp_path / "audit"
  snap = Snapshot(source)
  result = run("data", "audit", f"--data={source}", f"--out={out}", "--lang=")
  assert result.returncode == 0, str(result)
  report = json.loads((out / "audit.json").read_text())
  assert [(r["row"], r["reason"].split(":")[0]) for r in report["unreadable"]["rows"]] == [(10, "unbalanced quote")]
  assert sum(s["rows"] for s in report["splits"].values()) == 16, report["splits"]
  snap.assert_unchanged()


@pytest.mark.parametrize("recipe, words", [
  ("tiny.py:nope", ["tiny.py", "unknown variant", "'nope'"]),
  ("sentiment_minilm.py:quik", ["sentiment_minilm.py", "'quik'", "quick"]),
  ("sft_smollm2.py:quick,extra", ["sft_smollm2.py", "'extra'"]),
], ids=["tiny_variant", "sentiment_variant_misspelt", "sft_extra_variant"])
def test_unknown_recipe_variants_are_refused(tmp_path, recipe, words):
  snap = Snapshot(CONFIGS, tmp_path)
  result = run("train", f"--config={CONFIGS / recipe}", f"--workdir={tmp_path / 'run'}")
  expect_error(result, "train", *words)
  snap.assert_unchanged()
