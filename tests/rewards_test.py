"""jaxtune.rewards.load: a Python callable, a classifier run's label probability, and the checks
on what a reward returns (one finite float per completion, errors naming grpo.reward)."""

import sys
import textwrap

import pytest

from jaxtune import predict, rewards, train
from jaxtune.errors import ConfigError
from tests.finetune_test import classification_config, sentiment_rows, tiny_bert, write_jsonl

__all__ = ["tiny_bert"]  # a fixture, used by name


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
  (tmp_path / "my_rewards.py").write_text(
    textwrap.dedent("""
    import numpy as np

    def length(prompts, completions):
      return [float(len(c)) for c in completions]

    def numpy_scalars(prompts, completions):
      return np.arange(len(completions), dtype=np.float32)

    def short(prompts, completions):
      return [1.0]

    def nan(prompts, completions):
      return [float("nan")] * len(completions)

    def text(prompts, completions):
      return ["high"] * len(completions)

    def one_number(prompts, completions):
      return 3.0

    NOT_A_FUNCTION = 3
  """)
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  yield "my_rewards"
  sys.modules.pop("my_rewards", None)


def test_a_python_callable_is_imported_and_its_floats_checked(reward_module):
  fn = rewards.load(f"{reward_module}:length")
  assert fn(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
  out = rewards.load(f"{reward_module}:numpy_scalars")(["p"] * 3, ["a", "b", "c"])
  assert out == [0.0, 1.0, 2.0] and all(type(r) is float for r in out)


@pytest.mark.parametrize(
  "spec, match",
  [
    ("no_such_module_xyz:f", r"grpo\.reward='no_such_module_xyz:f': cannot import module"),
    ("{m}:missing", r"grpo\.reward=.*has no 'missing'"),
    ("{m}:NOT_A_FUNCTION", r"NOT_A_FUNCTION is a int, not a function"),
    ("just_a_name", r"grpo\.reward='just_a_name': expected 'module:function'"),
    ("classifier:", r"expected 'classifier:RUN_DIR:LABEL'"),
    ("classifier::positive", r"no run directory"),
    ("classifier:/nonexistent/run", r"expected 'classifier:RUN_DIR:LABEL'"),
    ("classifier:/nonexistent/run:positive", r"/nonexistent/run"),
  ],
)
def test_specs_that_cannot_load_are_one_line_config_errors(reward_module, spec, match):
  with pytest.raises(ConfigError, match=match) as e:
    rewards.load(spec.format(m=reward_module))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "name, match",
  [
    ("short", r"returned 1 rewards for 2 completions"),
    ("nan", r"reward 0 is nan for completion 'a'; rewards must be finite"),
    ("text", r"reward 0 is 'high' \(str\), not a float"),
    ("one_number", r"returned a float, not a list of floats"),
  ],
)
def test_bad_outputs_name_the_spec(reward_module, name, match):
  fn = rewards.load(f"{reward_module}:{name}")
  with pytest.raises(ConfigError, match=rf"grpo\.reward='{reward_module}:{name}': {match}"):
    fn(["p", "q"], ["a", "b"])


def test_classifier_reward_is_the_runs_probability_of_the_label(tiny_bert, tmp_path):
  data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(200, 0))
  workdir = tmp_path / "run"
  config = classification_config(tiny_bert, data)
  config.train.steps, config.train.eval_every = 20, 20
  config.export.enabled = False
  train.train_and_evaluate(config, workdir)

  texts = [r["text"] for r in sentiment_rows(7, 3)]  # 7 = 4 + 3: a padded last batch
  positive = rewards.load(f"classifier:{workdir}:positive", batch_size=4)(["prompt"] * 7, texts)
  assert all(0.0 <= p <= 1.0 for p in positive)
  # The same weights and tokenization as jaxtune.predict (whose probability is the top label's).
  for (label, p), pos in zip(predict.classify(workdir, texts), positive, strict=True):
    assert pos == pytest.approx(p if label == "positive" else 1 - p, abs=1e-5)

  with pytest.raises(
    ConfigError, match=r"the run's labels are negative, positive; 'great' is none"
  ):
    rewards.load(f"classifier:{workdir}:great")
  with pytest.raises(
    ConfigError,
    match=r"grpo\.reward='reward_model:.*': .*scores come from a "
    r"reward-model run \(model.task='reward'\)",
  ):
    rewards.load(f"reward_model:{workdir}")
