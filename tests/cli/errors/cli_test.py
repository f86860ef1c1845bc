"""Issue 16's battery for the command line itself: each mistake a user can make on the flags, the
recipe and search files, the workdir and the input files of `train`, `eval`, `export`,
`generate`, `data` and `tune` is one line `jaxtune <sub>: error: ...` (exit 2, no traceback)
naming what is at fault, and leaves every file as it was. Also: --debug and JAXTUNE_DEBUG=1
show the traceback, --help lists --debug, and a bug keeps its traceback (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.errors import harness
from tests.cli.errors.harness import REPO, Snapshot, expect_error

TINY = "--config=configs/tiny.py"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
  """A finished 4-step run of configs/tiny.py with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("tiny") / "run"
  done = harness.run("train", TINY, f"--workdir={workdir}", "--config.train.steps=4",
                     "--config.optim.warmup_steps=1", "--config.checkpoint.every_steps=2",
                     "--config.train.eval_every=2")
  assert done.returncode == 0, str(done)
  return workdir


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
  """Bad inputs of every kind, in a folder of their own (a recipe that Python loads may leave
  its bytecode in recipes/__pycache__)."""
  r = tmp_path / "recipes"
  r.mkdir()
  out = {
    "syntax": r / "syntax.py", "imports": r / "imports.py", "search_syntax": r / "search_syntax.py",
    "search_key": r / "search_key.py", "prompts_row": tmp_path / "prompts.jsonl",
    "prompts_json": tmp_path / "garbled.jsonl", "notrun": tmp_path / "notrun",
  }
  out["syntax"].write_text("from jaxtune import config\n\ndef get_config(arg=None:\n  return config.default()\n")
  out["no_get_config"] = r / "no_get_config.py"
  out["no_get_config"].write_text("from jaxtune import config\n\nSTEPS = 3\n")
  out["imports"].write_text("import jaxtune_no_such_module\n\ndef get_config(arg=None):\n  return None\n")
  out["search_syntax"].write_text("def get_config(arg=None)\n  pass\n")
  out["search_key"].write_text(
    "from jaxtune.tune import space\n\n\ndef get_config(arg=None):\n  c = space.default()\n"
    "  c.space['optim.learning_rte'] = space.loguniform(1e-3, 1e-2)\n  c.budget.trials = 1\n"
    "  c.trial.steps = 2\n  return c\n")
  out["prompts_row"].write_text('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
  out["prompts_json"].write_text("this is not json\n")
  out["notrun"].mkdir()
  (out["notrun"] / "notes.txt").write_text("not a run\n")
  return out


def _fake_run(path: Path, config: dict) -> Path:
  """A workdir whose config.json says what a run of `config` would (no checkpoints)."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  return path


# (subcommand args with {tmp}, {run}, {f[...]} placeholders, words of the message).
CASES = {
  # train: flags, recipe file, config keys and values, data
  "train_unknown_flag": (["train", "--confg=configs/tiny.py", "--workdir={tmp}/w"],
                         ["--confg", "unknown flag", "did you mean --config?"]),
  "train_missing_flags": (["train"], ["--config", "--workdir", "required"]),
  "train_missing_config_file": (["train", "--config={tmp}/nope.py", "--workdir={tmp}/w"],
                                ["nope.py", "no such file"]),
  "train_misspelled_config_file": (["train", "--config=configs/tyni.py", "--workdir={tmp}/w"],
                                   ["configs/tyni.py", "did you mean configs/tiny.py?"]),
  "train_recipe_syntax_error": (["train", "--config={f[syntax]}", "--workdir={tmp}/w"],
                                ["syntax.py line 3", "syntax"]),
  "train_recipe_import_error": (["train", "--config={f[imports]}", "--workdir={tmp}/w"],
                                ["imports.py line 1", "ModuleNotFoundError", "jaxtune_no_such_module"]),
  "train_recipe_without_get_config": (["train", "--config={f[no_get_config]}", "--workdir={tmp}/w"],
                                      ["no_get_config.py", "defines no get_config"]),
  "train_unknown_config_key": (["train", TINY, "--workdir={tmp}/w", "--config.train.stepz=3"],
                               ["--config.train.stepz", "no such config key", "did you mean train.steps?"]),
  "train_unknown_config_section": (["train", TINY, "--workdir={tmp}/w", "--config.trian.steps=3"],
                                   ["--config.trian.steps", "did you mean train.steps?"]),
  "train_config_wrong_type": (["train", TINY, "--workdir={tmp}/w", "--config.train.steps=abc"],
                              ["--config.train.steps=abc", "expected an integer", "train.steps=60"]),
  "train_config_wrong_float": (["train", TINY, "--workdir={tmp}/w", "--config.optim.learning_rate=fast"],
                               ["--config.optim.learning_rate=fast", "expected a number"]),
  "train_stray_argument": (["train", TINY, "--workdir={tmp}/w", "configs/tiny.py"],
                           ["unexpected argument 'configs/tiny.py'", "--name=value"]),
  "train_missing_data_file": (["train", TINY, "--workdir={tmp}/w", "--config.model.task=seq_cls",
                               "--config.data.kind=classification", "--config.data.source={tmp}/missing.jsonl"],
                              ["missing.jsonl", "no such file"]),
  "train_warmup_too_long": (["train", TINY, "--workdir={tmp}/w", "--config.train.steps=4"],
                            ["optim.warmup_steps=10", "total_steps=4", "lower optim.warmup_steps"]),
  # eval: the workdir, flag values, the data file
  "eval_missing_workdir": (["eval", "--workdir={tmp}/nowhere", "--data={tmp}/x.jsonl"],
                           ["--workdir=", "nowhere", "no such directory"]),
  "eval_workdir_not_a_run": (["eval", "--workdir={f[notrun]}", "--data={tmp}/x.jsonl"],
                             ["notrun", "not a `jaxtune train` run", "config.json"]),
  "eval_bad_step": (["eval", "--workdir={run}", "--data=x.jsonl", "--step=abc"],
                    ["--step=abc", "expected an integer"]),
  "eval_missing_data_file": (["eval", "--workdir={tmp}/cls", "--data={tmp}/missing.jsonl"],
                             ["missing.jsonl", "no such file"]),
  "eval_synthetic_run": (["eval", "--workdir={run}", "--data={tmp}/x.jsonl"],
                         ["data.kind='synthetic'", "generated data"]),
  # export: flags, the workdir, the step
  "export_missing_out": (["export", "--workdir={run}"], ["--out is a required flag"]),
  "export_bad_bool": (["export", "--workdir={run}", "--out={tmp}/o", "--merge_lora=maybe"],
                      ["--merge_lora=maybe", "expected true or false"]),
  "export_workdir_not_a_run": (["export", "--workdir={f[notrun]}", "--out={tmp}/o"],
                               ["notrun", "not a `jaxtune train` run"]),
  "export_step_not_saved": (["export", "--workdir={run}", "--out={tmp}/o", "--step=99"],
                            ["--step=99", "no checkpoint of that step", "it has 2, 4"]),
  "export_run_without_checkpoints": (["export", "--workdir={tmp}/fresh", "--out={tmp}/o"],
                                     ["fresh", "no checkpoint yet", "jaxtune train"]),
  "export_gguf_classifier": (["export", "--workdir={tmp}/cls", "--format=gguf", "--out={tmp}/m.gguf"],
                             ["--format=gguf", "seq_cls model", "causal language models", "--format=hf"]),
  "export_gguf_unknown_quant": (["export", "--workdir={run}", "--format=gguf", "--quant=q4_k",
                                 "--out={tmp}/m.gguf"], ["--quant='q4_k'", "f32, f16, bf16, q8_0"]),
  "export_gguf_without_tokenizer": (["export", "--workdir={run}", "--format=gguf", "--out={tmp}/m.gguf"],
                                    ["--format=gguf", "no tokenizer", "preset:"]),
  # generate: flags, sources, prompts
  "generate_unknown_flag": (["generate", "--model=preset:tiny-llama", "--promt=hi"],
                            ["--promt", "did you mean --prompt?"]),
  "generate_no_source": (["generate", "--prompt=hi"], ["exactly one of --workdir", "--model", "neither"]),
  "generate_missing_model": (["generate", "--model={tmp}/no_model", "--prompt=hi"],
                             ["no_model", "no such file or directory", "hub id"]),
  "generate_preset_without_tokenizer": (["generate", "--model=preset:tiny-llama", "--prompt=hi"],
                                        ["--model=preset:tiny-llama", "pass --tokenizer"]),
  "generate_bad_temperature": (["generate", "--model={tmp}/no_model", "--prompt=hi", "--temperature=-1"],
                               ["--temperature=-1", ">= 0"]),
  "generate_missing_prompts_file": (["generate", "--model={tmp}/no_model", "--prompts_file={tmp}/p.txt"],
                                    ["--prompts_file=", "p.txt", "no such file"]),
  "generate_prompts_file_bad_row": (["generate", "--model={tmp}/no_model", "--prompts_file={f[prompts_row]}"],
                                    ["prompts.jsonl:2", "string 'prompt'"]),
  "generate_prompts_file_not_json": (["generate", "--model={tmp}/no_model", "--prompts_file={f[prompts_json]}"],
                                     ["garbled.jsonl:1", "not json"]),
  "generate_out_over_prompts_file": (["generate", "--model={tmp}/no_model", "--prompts_file={f[prompts_row]}",
                                      "--out={f[prompts_row]}", "--overwrite"],
                                     ["--out=", "prompts.jsonl", "input of this command"]),
  "generate_out_exists": (["generate", "--model={tmp}/no_model", "--prompt=hi", "--out={f[prompts_json]}"],
                          ["--out=", "garbled.jsonl", "exists", "--overwrite"]),
  "generate_workdir_not_a_run": (["generate", "--workdir={f[notrun]}", "--prompt=hi"],
                                 ["notrun", "not a `jaxtune train` run"]),
  # data: commands, flags, files
  "data_audit_missing_file": (["data", "audit", "--data={tmp}/missing.jsonl", "--out={tmp}/audit"],
                              ["missing.jsonl", "no such file"]),
  "data_unknown_command": (["data", "inspect", "--data={tmp}/x.jsonl", "--out={tmp}/audit"],
                           ["audit or clean", "inspect"]),
  "data_missing_out": (["data", "audit", "--data={tmp}/x.jsonl"], ["--out is a required flag"]),
  "data_bad_float": (["data", "audit", "--data={tmp}/x.jsonl", "--out={tmp}/a", "--near_threshold=high"],
                     ["--near_threshold=high", "expected a number"]),
  "data_missing_config_file": (["data", "audit", "--config={tmp}/nope.py", "--out={tmp}/a"],
                               ["--config=", "nope.py", "no such file"]),
  # tune: the search file and its keys
  "tune_missing_search_flag": (["tune", TINY, "--workdir={tmp}/study"], ["--search is a required flag"]),
  "tune_missing_search_file": (["tune", TINY, "--search={tmp}/nope.py", "--workdir={tmp}/study"],
                               ["--search=", "nope.py", "no such file"]),
  "tune_search_syntax_error": (["tune", TINY, "--search={f[search_syntax]}", "--workdir={tmp}/study"],
                               ["search_syntax.py line 1"]),
  "tune_unknown_algorithm": (["tune", TINY, "--search=configs/search/tiny.py:annealing", "--workdir={tmp}/study"],
                             ["configs/search/tiny.py", "unknown variant", "'annealing'", "grid, random, tpe, gp, pbt"]),
  "tune_search_key_not_in_config": (["tune", TINY, "--search={f[search_key]}", "--workdir={tmp}/study"],
                                    ["search_key.py", "learning_rte", "did you mean 'learning_rate'?"]),
  "tune_unknown_search_override": (["tune", TINY, "--search=configs/search/tiny.py", "--workdir={tmp}/study",
                                    "--search.budget.trialz=2"],
                                   ["--search.budget.trialz", "did you mean budget.trials?"]),
  "tune_bad_enum": (["tune", TINY, "--search=configs/search/tiny.py", "--workdir={tmp}/study", "--population=maybe"],
                    ["--population=maybe", "auto|on|off"]),
  "tune_pbt_shared_not_pbt": (["tune", TINY, "--search=configs/search/tiny.py", "--workdir={tmp}/study", "--pbt_shared"],
                              ["--pbt_shared", "search.algorithm='tpe'", "--search=...:pbt"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_line_error(name, tmp_path, files, tiny_run):
  args, words = CASES[name]
  sub = args[0]
  _fake_run(tmp_path / "fresh", {})  # the defaults: a preset model on synthetic data
  from jaxtune.data import assets

  try:
    minilm = str(assets.minilm_dir())
  except FileNotFoundError:
    minilm = "preset:tiny-llama"
  _fake_run(tmp_path / "cls", {"model": {"source": minilm, "task": "seq_cls"},
                               "data": {"kind": "classification", "source": "train.jsonl"}})
  (tmp_path / "cls" / "checkpoints").mkdir()  # so eval gets as far as the data
  args = [a.format(tmp=tmp_path, run=tiny_run, f=files) for a in args]
  snap = Snapshot(tmp_path, tiny_run, REPO / "configs")
  result = harness.run(*args)
  expect_error(result, sub, *words)
  # Loading a recipe may leave its bytecode.
  allowed = [tmp_path / "recipes" / "__pycache__", REPO / "configs" / "__pycache__",
             REPO / "configs" / "search" / "__pycache__"]
  snap.assert_unchanged(except_under=tuple(allowed))


def test_battery_covers_every_subcommand():
  subs = {args[0] for args, _ in CASES.values()}
  assert subs == {"train", "eval", "export", "generate", "data", "tune"} and len(CASES) >= 25


def test_unknown_subcommand_is_one_line():
  result = harness.run("trian", TINY)
  assert result.returncode == 2 and "Traceback" not in result.stderr, str(result)
  assert result.stderr.strip() == ("jaxtune: error: unknown subcommand 'trian'; did you mean train? "
                                   "(jaxtune --help lists them: train, eval, generate, export, data, tune, report)")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, tmp_path):
  args = ["train", TINY, f"--workdir={tmp_path}/w", "--config.train.stepz=3"]
  result = harness.run(*args, "--debug") if how == "flag" else harness.run(*args, env={"JAXTUNE_DEBUG": "1"})
  assert result.returncode == 2 and "Traceback" in result.stderr, str(result)
  assert "ConfigError: --config.train.stepz: no such config key" in result.stderr, str(result)
  assert result.stderr.rstrip().splitlines()[-1].startswith("jaxtune train: error: --config.train.stepz")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("sub", ["train", "eval", "export", "generate", "data", "tune"])
def test_help_lists_debug_and_verbosity(sub):
  result = harness.run(sub, "--help")
  assert result.returncode == 0 and "--[no]debug" in result.stdout, str(result)
  assert "JAXTUNE_DEBUG=1" in result.stdout
  # absl's --verbosity, described as jaxtune uses it (quiet unless given).
  assert "-v,--verbosity: Log detail: not given, warnings and errors only" in result.stdout
  assert "0 adds INFO and 1 DEBUG" in result.stdout


def test_train_help_says_how_configs_and_overrides_work():
  text = harness.run("train", "--help").stdout
  for words in ("get_config(arg)", "`PATH:variant`", "configs/sentiment_minilm.py:quick",
                "--config.SECTION.KEY=VALUE", "--config.train.steps=200", "true/false",
                "closest", "docs/config_reference.md"):
    assert words in text, (words, text)
  assert (REPO / "docs" / "config_reference.md").is_file()


def test_a_bug_keeps_its_traceback(capsys):
  from jaxtune import cli

  def main(argv):
    raise RuntimeError("an invariant broke")

  with pytest.raises(SystemExit) as exit_:
    cli._guarded("jaxtune train", main, debug=False)(["jaxtune train"])
  err = capsys.readouterr().err
  assert exit_.value.code == 1
  assert "Traceback" in err and "RuntimeError: an invariant broke" in err
  assert "jaxtune train: internal error: this is a bug in jaxtune" in err


def test_a_user_error_is_one_line(capsys):
  from jaxtune import cli, errors

  def main(argv):
    raise errors.DataError("x.jsonl, row 3: no text\n  (multi-line)")

  with pytest.raises(SystemExit) as exit_:
    cli._guarded("jaxtune eval", main, debug=False)(["jaxtune eval"])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == "jaxtune eval: error: x.jsonl, row 3: no text (multi-line)\n"
