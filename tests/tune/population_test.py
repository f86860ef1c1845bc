"""The vmapped population matches its members trained one by one; PBT exploits, explores,
records lineage and resumes."""

import json
import logging
import re

import jax
import numpy as np
import optuna
import pytest

from jaxtune import optim
from jaxtune.errors import ConfigError
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


def test_population_sharded_over_devices_matches_the_unsharded_one(tiny_config, tmp_path):
  # 4 members on the 8 fake devices: a (population=4, data=2) mesh, each member's batch split
  # over its own 2 devices, against all 4 members on one device.
  assert jax.device_count() == 8
  hp = [{"optim.learning_rate": 3e-3 * (i + 1), "optim.weight_decay": 0.02 * i} for i in range(4)]
  runs = {}
  for name, mesh in (("sharded", {"population": -1, "data": -1}),
                     ("one device", {"population": 1, "data": 1})):
    tiny_config.mesh.update(mesh)
    pop = population.Population(tiny_config, hp, 20, tmp_path / name)
    losses = pop.train(0, 3)
    runs[name] = (pop, losses, [e["eval/loss"] for e in pop.evaluate()])
  sharded, one = runs["sharded"][0], runs["one device"][0]
  assert dict(sharded.mesh.shape) == {"population": 4, "data": 2, "fsdp": 1, "tensor": 1}
  assert one.mesh.devices.size == 1
  for x in jax.tree.leaves(sharded.states):  # every leaf split by member, one member per slice
    assert x.sharding.spec[0] == "population", x.sharding
    assert {s.data.shape[0] for s in x.addressable_shards} == {1}
    assert len(x.sharding.device_set) == 8
  np.testing.assert_allclose(runs["sharded"][1], runs["one device"][1], rtol=1e-5)
  np.testing.assert_allclose(runs["sharded"][2], runs["one device"][2], rtol=1e-5)
  assert len(set(np.round(runs["sharded"][2], 4))) == 4  # the members differ
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(sharded.states["params"]), jax.device_get(one.states["params"]))
  # PBT's exploit keeps the layout: member 3 takes member 0's weights, still split by member.
  sharded.copy_member(3, 0)
  x = jax.tree.leaves(sharded.states["params"])[0]
  assert x.sharding == jax.tree.leaves(sharded.state_sh["params"])[0]
  np.testing.assert_array_equal(jax.device_get(x[3]), jax.device_get(x[0]))


@pytest.mark.parametrize("mesh, vmapped, message", [
  ({"population": 3}, True, r"mesh.population=3: 4 population members do not split into 3 equal "
                            r"groups; set --config.mesh.population to a divisor of 4"),
  ({"population": 4, "data": 4}, True, r"mesh.population=4: 4 groups of 4 devices .* need 16 "
                                       r"devices, have 8"),
  ({"population": 2}, False, r"mesh.population=2 .* --population=off"),
])
def test_a_population_that_cannot_split_is_refused_naming_the_key(tiny_config, tmp_path, mesh,
                                                                   vmapped, message):
  tiny_config.mesh.update(mesh)
  hp = [{"optim.learning_rate": 1e-3}] * 4
  with pytest.raises(ConfigError, match=message):
    population.Population(tiny_config, hp, 10, tmp_path, vmapped=vmapped)


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
