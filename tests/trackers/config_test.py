"""`report_to` and `tracking.*` in the config: names checked, missing packages named with the
pip extra, keys refused where no tracker reads them, free to change on resume."""

import sys

import pytest

from jaxtune import config as jt_config
from jaxtune import resume, trackers
from jaxtune.errors import ConfigError


def test_unknown_tracker_names_the_key_and_the_known_ones():
  c = jt_config.default()
  c.report_to = "tensorboard,mlfow"
  with pytest.raises(ConfigError, match=r"report_to='tensorboard,mlfow'.*'mlfow'.*"
                                        r"known: tensorboard, mlflow, wandb"):
    jt_config.validate(c)
  assert trackers.parse(" TensorBoard , wandb,wandb") == ("tensorboard", "wandb")
  assert trackers.parse("") == trackers.parse("none") == ()


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_package_says_which_extra_installs_it(name, monkeypatch):
  monkeypatch.setitem(sys.modules, name, None)  # `import <name>` now fails, as if not installed
  c = jt_config.default()
  c.report_to = f"tensorboard,{name}"
  with pytest.raises(ConfigError, match=rf"{name} is not installed; pip install 'jaxtune\[{name}\]'"):
    jt_config.validate(c)


def test_tracking_keys_need_a_tracker_that_reads_them():
  c = jt_config.default()
  c.tracking.experiment = "x"
  with pytest.raises(ConfigError, match="tracking.experiment.*only read with report_to=mlflow"):
    jt_config.check_ignored(c, {"tracking.experiment"})
  c.report_to = "wandb"
  jt_config.check_ignored(c, {"tracking.experiment"})
  c.tracking.mlflow_uri = "sqlite:///x.db"
  with pytest.raises(ConfigError, match="tracking.mlflow_uri"):
    jt_config.check_ignored(c, {"tracking.mlflow_uri"})


def test_the_cli_names_the_experiment_after_the_recipe():
  c = jt_config.default()
  trackers.name_experiment(c, "configs/sft_smollm2.py")
  assert c.tracking.experiment == ""  # tensorboard only: nothing reads it, config.json unchanged
  c.report_to = "mlflow"
  trackers.name_experiment(c, "configs/sft_smollm2.py:quick")
  assert c.tracking.experiment == "sft_smollm2"


def test_resuming_with_other_trackers_is_no_config_change():
  old, new = jt_config.default(), jt_config.default()
  new.report_to = "tensorboard,mlflow"
  new.tracking.experiment = "x"
  assert resume.differences(old.to_dict(), new.to_dict()) == {}
