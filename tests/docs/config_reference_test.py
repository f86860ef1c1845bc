"""docs/config_reference.md matches what jaxtune.tools.config_reference writes from the code."""

import ml_collections

from jaxtune import config as jt_config
from jaxtune.tools import config_reference


def test_committed_reference_is_current():
  committed = config_reference.OUT.read_text()
  assert committed == config_reference.render(), (
    f"docs/config_reference.md is stale: regenerate it with `{config_reference.COMMAND}`")


def test_every_key_is_listed_with_its_default_and_a_meaning():
  text = config_reference.render()

  def walk(c, prefix=""):
    for k, v in c.items():
      if isinstance(v, ml_collections.ConfigDict):
        yield from walk(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v

  rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines()
          if line.startswith("| `")}
  for key, value in walk(jt_config.default()):
    assert key in rows, key
    assert config_reference._value(value) in rows[key], key
    assert rows[key].rstrip(" |").split("|")[-1].strip(), f"{key}: no meaning in the source"


def test_comments_are_read_from_the_source():
  docs = config_reference.documented_keys(jt_config.default)
  assert docs["optim.learning_rate"] == "peak learning rate"  # trailing comment, optim.py
  assert docs["model.source"].startswith("An HF directory")  # comment line above, config.py
  assert docs["data.label_names"].startswith("comma-separated")  # 'Classification.' is a title
  assert docs["lora.rank"].startswith("r; 0 = LoRA off")  # lora.py, reached through config.py


def test_recipes_show_their_changes_without_local_paths():
  text = config_reference.render()
  assert "### `configs/tiny.py`" in text and "`configs/sft_smollm2.py:quick`" in text
  assert "`model.source` = `'<assets.minilm_dir()>'`" in text
  assert "site-packages" not in text
