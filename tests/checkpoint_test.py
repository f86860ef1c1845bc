"""Tests for jaxtune.checkpoint: bitwise sharded roundtrip, retention, save triggers, crash safety,
checksums, full and unwritable disks."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtune import checkpoint as ckpt_lib
from jaxtune import errors
from jaxtune.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mesh():
  return jax.make_mesh((2, 4), ("data", "model"))


def _state(mesh, seed: int):
  """Params (sharded, bf16 included), a stepped adam state, both RNG key kinds, EMA weights."""
  k = jax.random.split(jax.random.key(seed), 3)
  params = {
    "w": jax.device_put(jax.random.normal(k[0], (8, 16)), NamedSharding(mesh, P("data", "model"))),
    "b": jax.device_put(
      jax.random.normal(k[1], (16,)).astype(jnp.bfloat16), NamedSharding(mesh, P("model"))
    ),
    "lin": nnx.state(nnx.Linear(4, 3, rngs=nnx.Rngs(seed))),
  }
  tx = optax.adam(1e-2)
  opt = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt = tx.update(grads, opt, params)  # non-trivial mu/nu/count
  return {
    "params": params,
    "opt": opt,
    "rng": jax.random.key(seed + 100),
    "rng_raw": jax.random.PRNGKey(seed + 200),
    "ema": jax.tree.map(lambda x: x * 0.5, params),
  }


def _tiny(seed: int):
  return {"x": jnp.full((4,), float(seed)), "rng": jax.random.key(seed)}


def _abstract(state, shardings=None):
  def one(x, s=None):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s or x.sharding)

  if shardings is None:
    return jax.tree.map(one, state)
  return jax.tree.map(one, state, shardings)


def _assert_bitwise(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb, strict=True):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(
      np.asarray(x).reshape(-1).view(np.uint8), np.asarray(y).reshape(-1).view(np.uint8)
    )


def _ckpt(directory, **kw):
  args = dict(
    save_every_steps=0,
    save_every_minutes=0,
    keep_last=2,
    keep_best=0,
    best_metric="eval/loss",
    best_mode="min",
  )
  args.update(kw)
  return Checkpointer(directory, **args)


def _step_dirs(directory):
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def test_roundtrip_bitwise_into_requested_shardings(tmp_path):
  mesh = _mesh()
  state = _state(mesh, 0)
  meta = {"epoch": 1, "batch_in_epoch": 37, "step": 5, "config_hash": "abc", "seed": np.int64(3)}
  with _ckpt(tmp_path / "ck") as ck:
    assert ck.save(5, state, meta=meta, force=True)
    ck.wait()
    assert ck.latest_step() == 5

    # Restore into different shardings than saved: orbax must reshard on read.
    targets = jax.tree.map(lambda x: x.sharding, state)
    targets["params"]["w"] = NamedSharding(mesh, P("model", "data"))
    targets["ema"]["w"] = NamedSharding(mesh, P())
    targets["opt"][0].mu["b"] = NamedSharding(mesh, P(None))
    restored, meta_back = ck.restore(5, _abstract(state, targets))

  _assert_bitwise(state, restored)
  got = jax.tree.map(lambda x: x.sharding, restored)
  assert got["params"]["w"] == NamedSharding(mesh, P("model", "data"))
  assert got["ema"]["w"] == NamedSharding(mesh, P())
  assert got["opt"][0].mu["b"] == NamedSharding(mesh, P(None))
  assert got["params"]["b"] == NamedSharding(mesh, P("model"))
  assert len(restored["params"]["w"].addressable_shards) == 8
  assert isinstance(restored["params"]["lin"], nnx.State)
  assert jnp.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
  assert meta_back == {**meta, "seed": 3}

  # A fresh process (new Checkpointer) finds and restores it too.
  with _ckpt(tmp_path / "ck") as ck:
    step, again, meta_again = ck.restore_latest(_abstract(state))
  assert step == 5 and meta_again == meta_back
  _assert_bitwise(state, again)


def test_retention_keeps_last_k_and_best_k(tmp_path):
  losses = {1: 5.0, 2: 1.0, 3: None, 4: 3.0, 5: float("nan"), 6: 0.5, 7: None, 8: 4.0}
  with _ckpt(tmp_path / "ck", keep_last=2, keep_best=2) as ck:
    for step, loss in losses.items():
      metrics = {"train/loss": 9.0} if loss is None else {"eval/loss": loss}
      assert ck.save(step, _tiny(step), meta={"step": step}, metrics=metrics, force=True)
    ck.wait()
    # last 2 = {7, 8}; best 2 by min eval/loss among finite = {6, 2}; NaN/missing never best
    assert _step_dirs(tmp_path / "ck") == [2, 6, 7, 8]
    assert ck.best_step() == 6 and ck.latest_step() == 8
  with _ckpt(tmp_path / "ck", keep_last=2, keep_best=2) as ck:  # scores re-read from disk
    assert ck.best_step() == 6 and ck.latest_step() == 8

  with _ckpt(tmp_path / "mx", keep_last=1, keep_best=1, best_mode="max") as ck:
    for step, acc in {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.1}.items():
      ck.save(step, _tiny(step), meta={}, metrics={"eval/loss": acc}, force=True)
    ck.wait()
    assert _step_dirs(tmp_path / "mx") == [2, 4] and ck.best_step() == 2

  # Without the metric nothing is ever best, even with room to keep: only the last K stay.
  with _ckpt(tmp_path / "none", keep_last=2, keep_best=5) as ck:
    for step in range(1, 5):
      ck.save(step, _tiny(step), meta={}, metrics={"train/loss": 1.0}, force=True)
    ck.wait()
    assert _step_dirs(tmp_path / "none") == [3, 4] and ck.best_step() is None


def test_should_save_by_steps_and_minutes(tmp_path, monkeypatch):
  clock = [1000.0]
  monkeypatch.setattr(ckpt_lib, "_now", lambda: clock[0])
  ck = _ckpt(tmp_path / "a", save_every_steps=5)
  assert [s for s in range(0, 21) if ck.should_save(s)] == [5, 10, 15, 20]
  clock[0] += 1e6
  assert not ck.should_save(7)  # minutes trigger off
  ck.close()

  ck = _ckpt(tmp_path / "b", save_every_minutes=2, async_save=False)
  clock[0] += 119
  assert not ck.should_save(1)
  clock[0] += 1
  assert ck.should_save(2)
  assert ck.save(2, _tiny(2), meta={})  # not forced: goes through should_save, resets the timer
  assert not ck.should_save(3) and not ck.save(3, _tiny(3), meta={})
  clock[0] += 119
  assert not ck.should_save(4)
  clock[0] += 1
  assert ck.should_save(5)
  ck.close()
  assert _step_dirs(tmp_path / "b") == [2]

  ck = _ckpt(tmp_path / "c")
  clock[0] += 1e6
  assert not any(ck.should_save(s) for s in range(0, 50))
  ck.close()


def _copy_step(directory, src: int, dst: str):
  shutil.copytree(directory / str(src), directory / dst)
  return directory / dst


def test_incomplete_and_corrupt_checkpoints_fall_back(tmp_path, caplog):
  d = tmp_path / "ck"
  with _ckpt(d, keep_last=5) as ck:
    ck.save(10, _tiny(10), meta={"step": 10}, force=True)
    ck.save(20, _tiny(20), meta={"step": 20}, force=True)

  # A save killed before its commit: orbax's tmp dir (removed at start-up, never listed).
  _copy_step(d, 20, "99.orbax-checkpoint-tmp-1234")
  # A step dir with no commit marker: what a save killed mid-write leaves on GCS-style commit.
  unmarked = _copy_step(d, 20, "40")
  os.remove(unmarked / "commit_success.txt")
  step_meta = json.loads((unmarked / "_CHECKPOINT_METADATA").read_text())
  step_meta.pop("commit_timestamp_nsecs")
  (unmarked / "_CHECKPOINT_METADATA").write_text(json.dumps(step_meta))
  # Committed but with truncated array files.
  corrupt = _copy_step(d, 20, "50")
  truncated = 0
  for root, _, files in os.walk(corrupt / "state"):
    if os.path.basename(root) == "d":
      for f in files:
        os.truncate(os.path.join(root, f), os.path.getsize(os.path.join(root, f)) // 2)
        truncated += 1
  assert truncated

  abstract = _abstract(_tiny(0))
  with caplog.at_level(logging.WARNING, logger="jaxtune.checkpoint"):
    with _ckpt(d, keep_last=5) as ck:
      assert ck.latest_step() == 50  # committed: only reading can tell it is corrupt
      step, state, meta = ck.restore_latest(abstract)
      assert step == 20 and meta == {"step": 20}
      _assert_bitwise(state, _tiny(20))
      assert ck.latest_step() == 20
      with pytest.raises(FileNotFoundError):
        ck.restore(40, abstract)

      # Training resumes from 20; saving 50 again replaces the corrupt one, and the
      # superseded unmarked 40 is cleaned up once something newer is committed.
      ck.save(30, _tiny(30), meta={"step": 30}, force=True)
      ck.save(50, _tiny(50), meta={"step": 50}, force=True)
      ck.wait()
      assert _step_dirs(d) == [10, 20, 30, 50]
      assert not (d / "99.orbax-checkpoint-tmp-1234").exists()  # orbax's start-up cleanup
      step, state, _ = ck.restore_latest(abstract)
      assert step == 50
      _assert_bitwise(state, _tiny(50))
  text = caplog.text
  assert f"{d / '50'} is unreadable" in text
  assert f"{d / '40'} has no commit marker" in text


def test_unreadable_everywhere_raises_instead_of_starting_over(tmp_path):
  with _ckpt(tmp_path / "ck") as ck:
    ck.save(1, _tiny(1), meta={}, force=True)
    ck.wait()
    wrong = {"x": jax.ShapeDtypeStruct((5,), jnp.float32, sharding=_tiny(0)["x"].sharding)}
    # A changed config (or jaxtune version) must say so, not train from scratch.
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="new --workdir"):
      ck.restore_latest(wrong)
  with _ckpt(tmp_path / "empty") as ck:
    assert ck.restore_latest(_abstract(_tiny(0))) is None
    assert ck.latest_step() is None and ck.best_step() is None


_CHILD = textwrap.dedent(
  """
    import os, signal, sys
    import jax, jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from jaxtune.checkpoint import Checkpointer

    ck = Checkpointer(sys.argv[1], save_every_steps=0, save_every_minutes=0, keep_last=3,
                      keep_best=0, best_metric="eval/loss", best_mode="min")
    ck.save(1, {"x": jnp.full((64, 64), 1.0)}, meta={"step": 1}, force=True)
    ck.wait()

    def die(*args, **kwargs):  # all data written, commit not yet done
        os.kill(os.getpid(), signal.SIGKILL)

    atomicity.AtomicRenameTemporaryPath.finalize = die
    ck.save(2, {"x": jnp.full((64, 64), 2.0)}, meta={"step": 2}, force=True)
    ck.wait()
    sys.exit(3)  # unreachable unless the commit path changed
    """
)


def test_sigkill_during_async_save_resumes_from_previous(tmp_path):
  d = tmp_path / "ck"
  proc = subprocess.run(
    [sys.executable, "-c", _CHILD, str(d)], cwd=REPO, capture_output=True, timeout=120
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  names = os.listdir(d)
  assert "1" in names and "2" not in names
  assert any(n.startswith("2.orbax-checkpoint-tmp") for n in names), names

  abstract = {"x": jax.ShapeDtypeStruct((64, 64), jnp.float32, sharding=_tiny(0)["x"].sharding)}
  with _ckpt(d) as ck:
    assert ck.latest_step() == 1
    step, state, meta = ck.restore_latest(abstract)
    assert step == 1 and meta == {"step": 1}
    np.testing.assert_array_equal(np.asarray(state["x"]), 1.0)
    ck.save(2, {"x": state["x"] + 1}, meta={"step": 2}, force=True)  # the resumed run redoes it
  assert sorted(os.listdir(d)) == ["1", "2"]  # the killed save's tmp dir is gone


def test_saves_report_no_step_to_the_preemption_sync_point(tmp_path, monkeypatch):
  """Only the guard may tell JAX's sync point which step a process is at: orbax's finalize thread
  would report an earlier save's step, and a notice agreed then would name a passed step."""
  from jax.experimental import multihost_utils

  reported = []
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda step: reported.append(step) or False)
  with Checkpointer(tmp_path, save_every_steps=1, save_every_minutes=0, keep_last=1, keep_best=0,
                    best_metric="eval/loss", best_mode="min") as ck:
    for step in (1, 2):
      ck.save(step, _tiny(step), meta={"step": step})
  assert reported == []


# ------------------------------------------------------------------------------- checksums


def _random(seed: int):
  # Random values do not compress, so the array file stores them raw: a flipped byte changes
  # values instead of breaking decompression (which orbax would notice by itself).
  return {"x": jax.random.normal(jax.random.key(seed), (256, 64)), "n": jnp.arange(5) + seed}


def _flip_bytes(step_dir) -> str:
  """Inverts 4 bytes in the middle of the largest array file of a checkpoint; returns its path."""
  files = [os.path.join(root, f) for root, _, fs in os.walk(step_dir / "state")
           if os.path.basename(root) == "d" for f in fs]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(4)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))
  return path


def test_checksum_is_the_same_for_any_sharding_and_sees_one_changed_bit():
  mesh = _mesh()
  x = jax.random.normal(jax.random.key(0), (8, 16))
  tree = {"x": x, "b": x.astype(jnp.bfloat16), "i": jnp.arange(7), "k": jax.random.key(3),
          "m": jnp.array([True, False]), "s": jnp.float32(2.5)}
  ref = ckpt_lib.checksums(tree)
  assert set(ref) == {"['x']", "['b']", "['i']", "['k']", "['m']", "['s']"}
  for spec in (P("data", "model"), P("model", None), P()):
    sharded = dict(tree, x=jax.device_put(x, NamedSharding(mesh, spec)))
    assert ckpt_lib.checksums(sharded) == ref
  bits = np.asarray(x).copy().view(np.uint32)
  bits[3, 5] ^= 1  # the lowest mantissa bit of one element
  assert ckpt_lib.checksums(dict(tree, x=jnp.asarray(bits.view(np.float32))))["['x']"] != ref["['x']"]
  # Swapping two elements keeps a plain sum but not this one (each term depends on its index).
  swapped = np.asarray(x).copy()
  swapped[0, 0], swapped[0, 1] = swapped[0, 1], swapped[0, 0]
  assert ckpt_lib.checksums(dict(tree, x=jnp.asarray(swapped)))["['x']"] != ref["['x']"]


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  d = tmp_path / "ck"
  with _ckpt(d, keep_last=3) as ck:
    for s in (1, 2):
      ck.save(s, _random(s), meta={"step": s}, force=True)
  _flip_bytes(d / "2")
  abstract = _abstract(_random(0))
  with caplog.at_level(logging.WARNING, logger="jaxtune.checkpoint"):
    with _ckpt(d, keep_last=3) as ck:
      with pytest.raises(ckpt_lib.CheckpointCorruptError, match=r"differ from the checksum.*\['x'\]"):
        ck.restore(2, abstract)
      step, state, meta = ck.restore_latest(abstract)
  assert step == 1 and meta == {"step": 1}
  _assert_bitwise(state, _random(1))
  assert f"checkpoint {d / '2'} is corrupt" in caplog.text
  assert "falling back to the previous one" in caplog.text


def test_every_checkpoint_corrupt_raises_naming_the_directory(tmp_path):
  d = tmp_path / "ck"
  with _ckpt(d, keep_last=3) as ck:
    for s in (1, 2):
      ck.save(s, _random(s), meta={"step": s}, force=True)
  for s in (1, 2):
    _flip_bytes(d / str(s))
  with _ckpt(d, keep_last=3) as ck:
    with pytest.raises(ckpt_lib.CheckpointCorruptError,
                       match=rf"{d}: every checkpoint is corrupt .*backup.*new --workdir"):
      ck.restore_latest(_abstract(_random(0)))


def test_checkpoint_without_checksums_still_restores(tmp_path):
  d = tmp_path / "ck"
  with _ckpt(d) as ck:
    ck.save(1, _random(1), meta={"step": 1}, force=True)
  record_file = d / "1" / "meta" / "metadata"
  record = json.loads(record_file.read_text())
  assert record["checksums"]["algorithm"] == ckpt_lib.CHECKSUM_ALGORITHM
  del record["checksums"]  # as written by jaxtune before checksums
  record_file.write_text(json.dumps(record))
  with _ckpt(d) as ck:
    step, state, meta = ck.restore_latest(_abstract(_random(0)))
  assert step == 1 and meta == {"step": 1}
  _assert_bitwise(state, _random(1))


# ------------------------------------------------------------------------ full or unwritable disk


def _digests(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      with open(os.path.join(root, f), "rb") as fh:
        out[os.path.relpath(os.path.join(root, f), directory)] = fh.read()
  return out


def test_disk_full_before_a_save_is_one_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  d = tmp_path / "ck"
  ck = _ckpt(d)
  ck.save(1, _tiny(1), meta={"step": 1}, force=True)
  ck.wait()
  before = _digests(d)

  def full(fd, data):  # what the kernel answers on a full disk
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "write", full)
  with pytest.raises(errors.StorageError, match=rf"cannot write {d}: no space left on the device.*"
                     rf"checkpoints already in {d} \(steps 1\) are intact"):
    ck.save(2, _tiny(2), meta={"step": 2}, force=True)
  monkeypatch.undo()
  assert _digests(d) == before  # nothing written, nothing removed
  ck.close()


def test_disk_full_in_the_background_save_is_one_error_without_tracebacks(tmp_path, monkeypatch,
                                                                           caplog):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler

  d = tmp_path / "ck"
  ck = _ckpt(d)
  ck.save(1, _tiny(1), meta={"step": 1}, force=True)
  ck.wait()
  before = _digests(d / "1")

  async def full(self, x, directory):  # the disk fills while orbax's threads write step 2
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full)
  with caplog.at_level(logging.INFO):
    ck.save(2, _tiny(2), meta={"step": 2}, force=True)
    with pytest.raises(errors.StorageError, match=rf"cannot write {d / '2'}: no space left.*"
                       r"\(steps 1\) are intact"):
      ck.wait()
  monkeypatch.undo()
  # Step 1 only: orbax's threads may still be removing step 2's tmp files while this walks.
  assert _digests(d / "1") == before
  assert "No space left" in caplog.text  # orbax's own log lines stay, one line each
  assert "Traceback" not in caplog.text and all(r.exc_info is None for r in caplog.records)
  assert ck.latest_step() == 1
  ck.close()  # the failure was reported once: closing does not raise it again


def test_a_file_where_the_checkpoint_directory_goes_is_one_error(tmp_path):
  # Unwritable in a way that holds for root too (root ignores permission bits).
  (tmp_path / "ck").write_text("not a directory")
  with pytest.raises(errors.StorageError, match=rf"cannot write {tmp_path / 'ck'}: a file stands "
                     "where a directory is needed"):
    _ckpt(tmp_path / "ck").check_writable()  # what the trainer asks before its first step
