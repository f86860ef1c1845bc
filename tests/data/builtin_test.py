"""Builtin data sets: Rotten Tomatoes rows, labels and fixed split; chit-chat as chat messages."""

from __future__ import annotations

import collections

import pytest

from jaxtune import data
from jaxtune.data import assets, builtin
from jaxtune.data.readers import BadRows


@pytest.fixture(scope="module")
def rotten_rows():
  try:
    assets.rotten_tomatoes_txt()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  return builtin.read("rotten_tomatoes", BadRows())


def test_rotten_tomatoes_rows_and_labels(rotten_rows):
  assert len(rotten_rows) == 10_605
  ids = [r.fields["id"] for r in rotten_rows]
  assert ids == list(range(1, 10_606))
  labels = collections.Counter(r.fields["label"] for r in rotten_rows)
  assert labels == {"positive": 5331, "negative": 5274}
  by_id = {r.fields["id"]: r for r in rotten_rows}
  assert by_id[5331].fields["label"] == "positive" and by_id[5332].fields["label"] == "negative"
  first = by_id[1]
  assert first.fields["text"].startswith("The Rock is destined to be the 21st Century's new ''Conan''")
  assert not first.fields["text"].endswith("\r") and first.row == 1
  assert isinstance(first.fields["score"], float)
  assert any("’" in r.fields["text"] for r in rotten_rows)  # decoded as UTF-8
  assert builtin.DEFAULTS["rotten_tomatoes"]["label_names"] == "negative,positive"


def test_rotten_tomatoes_split_is_fixed_80_10_10(rotten_rows, make_cfg):
  cfg = make_cfg(kind="classification", source="rotten_tomatoes")

  def split():
    rows = data.read_splits(cfg.data, BadRows())
    return {k: [r.row for r in v] for k, v in rows.items()}

  a = split()
  assert a == split()
  assert [len(a[k]) for k in ("train", "validation", "test")] == [8485, 1060, 1060]
  assert sorted(sum(a.values(), [])) == [r.row for r in rotten_rows]
  assert a["test"][:5] == sorted(a["test"])[:5]  # file order within a split


def test_chitchat_conversations_alternate_user_and_assistant():
  try:
    assets.chitchat_json()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  rows = builtin.read("chitchat", BadRows())
  assert 4000 <= len(rows) <= 7168  # conversations where only one person spoke are left out
  for r in rows:
    roles = [m["role"] for m in r.fields["messages"]]
    assert roles[0] == "user" and "assistant" in roles
    assert all(a != b for a, b in zip(roles, roles[1:])), f"row {r.row}: {roles}"
    assert set(roles) <= {"user", "assistant"}
    assert all(m["content"].strip() for m in r.fields["messages"])
  first = rows[0].fields["messages"]
  assert first[0] == {"role": "user", "content": "Hello\nHow are you doing today?"}
  assert first[1]["content"].startswith("whats up MD\nim doing good")
  assert builtin.DEFAULTS["chitchat"]["sft_format"] == "chat"


def test_builtin_kind_mismatch_is_a_config_error(make_cfg, tmp_path):
  with pytest.raises(ValueError, match="data.kind='classification': builtin 'chitchat' is 'sft' data"):
    data.build(make_cfg(kind="classification", source="chitchat", tokenizer="x"), tmp_path)
