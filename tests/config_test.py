"""The run config's up-front checks: ranges, keys a run would ignore, best_metric, variants."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from jaxtune import config as jt_config
from jaxtune import optim, recipes
from jaxtune.errors import ConfigError, DataError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.glob("*.py")) + sorted((CONFIGS / "search").glob("*.py"))
VARIANTS = {"sentiment_minilm.py": ("quick",), "sentiment_mpnet.py": ("quick",),
            "sft_smollm2.py": ("quick",), "sentiment_smollm2_cls.py": ("quick", "gemma3"),
            "dpo_smollm2.py": ("quick",), "grpo_smollm2.py": ("quick",),
            "tweets_minilm.py": ("quick", "table", "label_errors,table", "balance,table", "balance,table,pool", "balance,table,pool,agreed"),
            "tweets_smollm2_cls.py": ("quick", "dedup,table", "balance,table")}
_recipe = recipes.module


def _config(**values):
  c = jt_config.default()
  for key, value in values.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize("path", [p for p in RECIPES if p.parent == CONFIGS], ids=lambda p: p.name)
def test_run_recipes_and_their_variants_validate(path):
  for arg in (None, *VARIANTS.get(path.name, ())):
    c = _recipe(path).get_config(arg)
    jt_config.validate(c)
    # A recipe sets no key its own settings would ignore.
    jt_config.check_ignored(c, jt_config.changed_keys(c))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_refuses_an_unknown_variant(path):
  with pytest.raises(ConfigError, match=r"unknown variant.*'nope'.*known variants"):
    _recipe(path).get_config("nope")


def test_variant_error_lists_the_known_ones_and_the_closest():
  with pytest.raises(ConfigError, match=r"known variants: quick \(did you mean 'quick'\?\)"):
    _recipe(CONFIGS / "sentiment_minilm.py").get_config("quik")
  with pytest.raises(ConfigError, match="exclude each other"):
    _recipe(CONFIGS / "search" / "tiny.py").get_config("tpe,grid")
  assert _recipe(CONFIGS / "search" / "tiny.py").get_config("grid").algorithm == "grid"
  # tweets_minilm's 'agreed' replaces the confidence step, so a step before it is refused.
  with pytest.raises(ConfigError, match=r"tweets_minilm.py:dedup,agreed: 'agreed' changes the "
                                        r"confidence step, which 'dedup' does not reach"):
    _recipe(CONFIGS / "tweets_minilm.py").get_config("dedup,agreed")


@pytest.mark.parametrize("key, value", [
  ("optim.learning_rate", math.nan), ("optim.learning_rate", math.inf), ("optim.learning_rate", -1e-3),
  ("optim.learning_rate", 0.0), ("optim.weight_decay", -0.1), ("optim.weight_decay", math.inf),
  ("optim.b1", 1.0), ("optim.b2", -0.5), ("optim.eps", 0.0), ("optim.grad_clip_norm", math.inf),
  ("optim.grad_clip_norm", -1.0), ("optim.warmup_steps", -1), ("optim.min_lr_ratio", 1.5),
  ("optim.wsd_decay_fraction", -0.1), ("optim.ema_decay", 1.0), ("optim.layerwise_lr_decay", 1.5),
  ("optim.swa_start", -2), ("train.eval_batch_size", 0), ("train.log_every", 0),
  ("train.eval_every", -1), ("train.text_samples", -1), ("train.epochs", math.nan),
  ("train.early_stopping_min_delta", -0.1), ("train.batch_size", 0), ("train.train_metric_rows", -2),
  ("checkpoint.every_steps", -1), ("checkpoint.keep_last", 0), ("checkpoint.keep_best", -1),
  ("checkpoint.every_minutes", math.inf), ("lora.rank", -1), ("lora.alpha", 0.0),
  ("lora.dropout", 1.0), ("data.seq_len", 1), ("data.max_rows", -1), ("data.max_train_rows", -1), ("mesh.fsdp", 0),
  ("mesh.data", 0), ("mesh.population", 0), ("model.num_labels", 1), ("seed", -1),
])
def test_out_of_range_values_are_refused_naming_the_key(key, value):
  with pytest.raises(ConfigError, match=rf"config: {key}="):
    jt_config.validate(_config(**{key: value}))


def test_every_range_holds_for_the_defaults_and_names_real_keys():
  c = jt_config.default()
  for key, interval in jt_config.RANGES.items():
    assert jt_config._in_range(jt_config._get(c, key), interval), key


def test_warmup_must_fit_the_steps():
  with pytest.raises(ConfigError, match=r"optim.warmup_steps=100 must be < total_steps=60"):
    jt_config.validate(_config(**{"train.steps": 60, "optim.warmup_steps": 100}))
  jt_config.validate(_config(**{"train.steps": 60, "optim.warmup_steps": 100, "optim.schedule": "constant"}))
  with pytest.raises(ConfigError, match="optim.freeze"):
    optim.check(_config(**{"optim.freeze": "(unclosed"}).optim)


@pytest.mark.parametrize("key, value, others, setting", [
  ("data.source", "x.jsonl", {}, "data.kind='classification' or 'sft'"),
  ("data.label_names", "a,b", {}, "data.kind='classification'"),
  ("lora.alpha", 32.0, {}, "lora.rank > 0"),
  ("optim.momentum", 0.9, {}, "optim.name=sgd|rmsprop"),
  ("optim.b2", 0.99, {"optim.name": "sgd"}, "optim.name=adamw|lion"),
  ("model.num_labels", 3, {}, "model.task='seq_cls'"),
  ("model.allow_pickle", True, {}, "an HF model.source"),
  ("train.text_samples", 2, {}, "data.kind='sft'"),
  ("train.early_stopping_min_delta", 0.01, {}, "train.early_stopping_patience > 0"),
  ("optim.wsd_decay_fraction", 0.2, {}, "optim.schedule=wsd"),
])
def test_keys_the_run_would_ignore_are_refused(key, value, others, setting):
  c = _config(**{key: value}, **others)
  with pytest.raises(ConfigError, match=rf"config: {key}=.*only read with .*{re.escape(setting)}"):
    jt_config.check_ignored(c, [key])


def test_ignored_keys_blame_only_what_the_user_set():
  c = _config(**{"lora.rank": 16, "lora.alpha": 32.0})
  c.lora.rank = 0  # `--config.lora.rank=0` on a LoRA recipe: its alpha is not the user's
  jt_config.check_ignored(c, ["lora.rank"])
  with pytest.raises(ConfigError, match="lora.alpha"):
    jt_config.check_ignored(c, ["lora.rank", "lora.alpha"])
  jt_config.check_ignored(_config(), ["data.source"])  # set to its default: nothing dropped


def test_best_metric_must_be_one_the_task_reports():
  with pytest.raises(ConfigError, match=r"best_metric='eval/los'.*eval/perplexity.*did you mean 'eval/loss'"):
    jt_config.validate(_config(**{"checkpoint.best_metric": "eval/los"}))
  with pytest.raises(ConfigError, match=r"model.task='causal_lm' reports"):
    jt_config.validate(_config(**{"checkpoint.best_metric": "eval/accuracy"}))
  cls = {"model.task": "seq_cls", "data.kind": "classification", "data.source": "user/dataset",
         "data.tokenizer": "tok"}
  jt_config.validate(_config(**cls, **{"checkpoint.best_metric": "eval/f1_macro"}))
  jt_config.validate(_config(**cls, **{"checkpoint.best_metric": "eval/f1/pos"}))  # checked on the data
  with pytest.raises(ConfigError, match="did you mean 'eval/f1/pos'"):
    jt_config.check_best_metric(_config(**cls, **{"checkpoint.best_metric": "eval/f1/pso"}), ("neg", "pos"))
  with pytest.raises(ConfigError, match="eval/f1/pso"):
    jt_config.validate(_config(**cls, **{"checkpoint.best_metric": "eval/f1/pso", "data.label_names": "neg,pos"}))


def test_label_names_must_match_num_labels():
  cls = {"model.task": "seq_cls", "data.kind": "classification", "data.source": "user/dataset",
         "data.tokenizer": "tok"}
  with pytest.raises(ConfigError, match=r"data.label_names='a,b,c': 3 names for model.num_labels=2"):
    jt_config.validate(_config(**cls, **{"data.label_names": "a,b,c", "model.num_labels": 2}))


def test_file_data_on_a_preset_model_needs_a_tokenizer():
  with pytest.raises(ConfigError, match="config: data.tokenizer=''.*has no tokenizer"):
    jt_config.validate(_config(**{"data.kind": "sft", "data.source": "user/dataset"}))


def test_preset_models_honour_config_overrides():
  from jaxtune import train

  with pytest.raises(ValueError, match=r"preset tiny-llama with model.config_overrides.*\['bogus'\]"):
    jt_config.validate(_config(**{"model.config_overrides": "bogus=1"}))
  c = _config(**{"model.config_overrides": "num_hidden_layers=1"})
  jt_config.validate(c)
  assert train.load_model(c, None, None).config.num_layers == 1


def test_a_missing_data_file_is_refused_before_anything_runs(tmp_path):
  cls = {"model.task": "seq_cls", "data.kind": "classification", "data.tokenizer": "tok"}
  with pytest.raises(DataError, match=r"data.validation_source='.*val.csv': no such file"):
    jt_config.validate(_config(**cls, **{"data.source": "user/dataset",
                                         "data.validation_source": str(tmp_path / "val.csv")}))
  (tmp_path / "val.csv").write_text("text,label\na,0\n")
  jt_config.validate(_config(**cls, **{"data.source": "user/dataset",
                                       "data.validation_source": str(tmp_path / "val.csv")}))
