"""The vmapped population matches its members trained one by one; PBT exploits, explores,
records lineage and resumes."""

import json
import logging
import re

import numpy as np
import optuna

from jaxtune import optim
from jaxtune.tune import pbt, population
from jaxtune.tune import study as study_lib


def test_vmapped_population_matches_members_run_one_by_one(tiny_config, tmp_path):
  hp = [{"optim.learning_rate": 3e-3, "optim.weight_decay": 0.0},
        {"optim.learning_rate": 3e-2, "optim.weight_decay": 0.1}]
  runs = {}
  for vmapped in (True, False):
    pop = population.Population(tiny_config, hp, 20, tmp_path / str(vmapped), vmapped=vmapped)
    losses = pop.train(0, 3)
    runs[vmapped] = (losses, [e["eval/loss"] for e in pop.evaluate()], pop)
  np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
  np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-5)
  assert abs(runs[True][1][0] - runs[True][1][1]) > 1e-3  # the hyperparameters took effect
  hps = optim.hyperparams(runs[True][2].states["opt_state"])
  np.testing.assert_allclose(hps["peak_lr"], [3e-3, 3e-2], rtol=1e-6)
  assert hps["peak_lr"].shape == (2,)


def test_untraceable_key_is_refused(tiny_config, tmp_path):
  try:
    population.Population(tiny_config, [{"train.batch_size": 4}], 10, tmp_path)
  except ValueError as e:
    assert "train.batch_size" in str(e)
  else:
    raise AssertionError("a batch size cannot vary inside one population")


def test_pbt_exploits_explores_and_records_lineage(tiny_config, tiny_search, tmp_path, caplog):
  search = tiny_search("pbt")
  with caplog.at_level(logging.INFO, logger="jaxtune.tune.pbt"):
    study = pbt.run(tiny_config, search, tmp_path)
  # The study and the generation reports name the objective.
  loaded = optuna.load_study(study_name=tmp_path.name, storage=study_lib.storage_url(tmp_path))
  assert loaded.metric_names == ["eval/loss"]
  assert "PBT generation 0 done at step 3: member 0 eval/loss=" in caplog.text
  assert re.search(r"PBT generation 1: member \d \(eval/loss=[\d.]+\) <- member", caplog.text)
  trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  assert len(trials) == 8  # 4 members x 2 generations
  book = json.loads((tmp_path / "pbt" / "lineage.json").read_text())
  assert book["generation"] == 2
  gen0 = {m["member"]: m["history"][0]["score"] for m in book["members"]}
  worst, best = max(gen0, key=gen0.get), min(gen0, key=gen0.get)  # eval/loss: lower is better
  step1 = book["members"][worst]["history"][1]
  assert step1["parent"] == best  # the bottom member took the top member's checkpoint ...
  parent_hp = book["members"][best]["history"][0]["hparams"]
  assert step1["hparams"] != parent_hp  # ... and explored from its hyperparameters
  by_member = {(t.user_attrs["member"], t.user_attrs["generation"]): t for t in trials}
  assert by_member[(worst, 1)].user_attrs["parent"] == best
  for i in range(4):
    assert list((tmp_path / "pbt" / f"member_{i:02d}" / "tb").iterdir())
  # A rerun finds every generation done and adds nothing.
  again = pbt.run(tiny_config, search, tmp_path)
  assert len(again.get_trials()) == 8
