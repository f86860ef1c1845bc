"""Classify raw texts with a finished run's model: `classify(workdir, texts)`.

The run's own record decides everything: its config.json (model, tokenizer, seq_len, mesh), its
label order from run.json, and its best checkpoint (else the latest), with averaged weights when
the run kept them, the same weights `jaxtune eval` scores and results.json reports.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxtune import checkpoint, export, sharding, train
from jaxtune import config as jt_config
from jaxtune import data as data_lib
from jaxtune.data import classification
from jaxtune.errors import ConfigError
from jaxtune.step import merge, model_kwargs


def classify(workdir: str | epath.PathLike, texts: Sequence[str], *, step: int = -1,
             batch_size: int = 32) -> list[tuple[str, float]]:
  """(label, probability) of the most likely class for each text, in order.

  Args:
    workdir: a finished (or interrupted) classification run's workdir.
    texts: raw strings; longer ones are truncated to the run's data.seq_len.
    step: checkpoint step to use (-1: the best, else the latest).
    batch_size: texts per forward pass (the last batch is padded, so one compilation).
  """
  workdir = epath.Path(workdir)
  config = jt_config.read_run_config(workdir)
  run_file = workdir / "run.json"
  run = json.loads(run_file.read_text()) if run_file.exists() else {}
  if config.model.task != "seq_cls":
    raise ConfigError(f"{workdir / 'config.json'}: model.task={config.model.task!r}; "
                      "classify needs a classification (seq_cls) run")
  label_names = tuple(run.get("extra", {}).get("label_names") or ())
  num_labels = config.model.num_labels or len(label_names)
  if not num_labels:
    raise ConfigError(f"{workdir / 'run.json'}: no label_names and config model.num_labels is 0; "
                      "the run never read its data (resume it with `jaxtune train`)")
  names = label_names or tuple(str(i) for i in range(num_labels))

  if not (workdir / "checkpoints").is_dir():  # before building a model, or orbax making the folder
    raise export.no_checkpoint_yet(workdir)
  mesh = sharding.make_mesh(**config.mesh)
  built = train.build_state(config, mesh, num_labels, 10**9, label_names, restoring=True)
  ckpt = checkpoint.Checkpointer(
    workdir / "checkpoints", save_every_steps=0, save_every_minutes=0, keep_last=10**6,
    keep_best=10**6, best_metric=config.checkpoint.best_metric, best_mode=config.checkpoint.best_mode,
  )
  chosen = export.choose_step(ckpt, step, workdir)
  params = train.eval_params(train.restore_step(ckpt, chosen, built))
  ckpt.close()

  tokenizer = data_lib.load_tokenizer(config.data.tokenizer or config.model.source)
  pad_id = classification.pad_token_id(tokenizer)
  probs_fn = jax.jit(functools.partial(_probabilities, built.eval_graphdef))
  out: list[tuple[str, float]] = []
  texts = [str(t) for t in texts]
  with sharding.use_mesh(mesh):
    for i in range(0, len(texts), batch_size):
      chunk = texts[i:i + batch_size]
      enc, _ = classification.encode(tokenizer, chunk, None, config.data.seq_len)
      batch = classification.pad(enc, config.data.seq_len, pad_id)
      # Pad to a full batch of masked rows so every call has the same shapes.
      batch = {k: np.pad(v, ((0, batch_size - len(chunk)), (0, 0))) for k, v in batch.items()}
      probs = np.asarray(probs_fn(params, built.frozen, batch))[: len(chunk)]
      out += [(names[int(p.argmax())], float(p.max())) for p in probs]
  return out


def _probabilities(graphdef, params: dict, frozen: dict | None, batch: dict) -> jax.Array:
  model = merge(graphdef, params, frozen)
  logits = model(batch["input_ids"], **model_kwargs(batch))
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
