"""Sequence classification (`model.task='seq_cls'`): one label per text or text pair.

Rows to arrays: `jaxtune.data.classification` (labels by name or id, padding to one length,
longest-first truncation) after the train split's quality pass (`jaxtune.data.quality`), chosen
by `data.kind='classification'`. Loss: cross-entropy per example, weighted per class when
`data.class_weights` asks (`jaxtune.losses.classification_loss`). Metrics: accuracy, macro and
per-class precision / recall / F1, the confusion matrix, and the misclassified examples
(`jaxtune.metrics`). A finished run exports a `...ForSequenceClassification` (or a
sentence-transformers directory with mean pooling) cut to data.seq_len tokens, and predicts
the most likely label of raw texts (`predict`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import losses, metrics
from jaxtune.objectives.base import Objective, merge, model_kwargs


class Classification(Objective):
  name = head = "seq_cls"
  labels = True
  fixed_length = True
  pipeline_tag = "text-classification"
  auto_classes = ("AutoModelForSequenceClassification", "AutoPeftModelForSequenceClassification")
  base_metrics = metrics.CLASSIFICATION_METRICS
  line_metrics = ("accuracy", "f1_macro", "loss")
  table_metrics = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "examples")

  # ---------------------------------------------------------------------------------- loss
  @staticmethod
  def _class_weights(cfg):
    return None if cfg.class_weights is None else jnp.asarray(cfg.class_weights, jnp.float32)

  def batch_weight(self, batch, cfg):
    return jnp.sum(losses.example_weights(batch, self._class_weights(cfg)))

  def loss_terms(self, model, batch, dropout_rng, cfg):
    logits = model(batch["input_ids"], **model_kwargs(batch), dropout_rng=dropout_rng)
    return losses.classification_loss(logits, batch, self._class_weights(cfg))

  def eval_sums(self, model, batch, lm_loss_chunk=-1):
    # Unweighted: validation scores every example alike, whatever the training's class weights.
    logits = model(batch["input_ids"], **model_kwargs(batch))
    loss_sum, weight = losses.classification_loss(logits, batch)
    return {"loss_sum": loss_sum, "weight": weight, "predictions": jnp.argmax(logits, axis=-1),
            "logits": logits.astype(jnp.float32)}

  # ------------------------------------------------------------------------------- metrics
  def metric_names(self, label_names=()):
    per_class = tuple(f"eval/{m}/{n}" for n in label_names for m in metrics.PER_CLASS_METRICS)
    return super().metric_names(label_names) + per_class

  def accepts_metric(self, name, label_names=()):
    if name in self.metric_names(label_names):
      return True
    kind, _, label = name.removeprefix("eval/").partition("/")
    # A per-class metric before the data is read: its label is checked once the labels are known.
    return (not label_names and bool(label) and name.startswith("eval/")
            and kind in metrics.PER_CLASS_METRICS)

  def metrics(self, sums, label_names=(), order=None):
    names = tuple(label_names) or tuple(str(i) for i in range(np.asarray(sums.probs[0]).shape[-1]))
    preds_a, labels_a = np.concatenate(sums.preds), np.concatenate(sums.labels)
    res = metrics.classification_metrics(preds_a, labels_a, len(names), names)
    res["loss"] = sums.loss_sum / max(sums.weight, 1e-9)
    details = {"predictions": preds_a, "labels": labels_a, "probs": np.concatenate(sums.probs),
               "example_id": np.concatenate(sums.ids) if sums.ids else None}
    if order is not None:
      back = np.argsort(order)
      details = {k: None if v is None else v[back] for k, v in details.items()}
    return res, details

  # -------------------------------------------------------------------------- finished run
  def usage(self, config, here, *, sbert, chat):
    seq_len = config.data.seq_len
    if sbert:
      return [
        "A sentence-transformers pipeline (mean pooling, then the classifier) whose `encode` "
        f"returns the logits; it truncates to the {seq_len} tokens the model was trained on.", "",
        "```python", "from sentence_transformers import SentenceTransformer", "",
        f"model = SentenceTransformer({here})", 'logits = model.encode(["a great film"])', "```"]
    return [
      f"Pass `truncation=True` to cut long texts to the {seq_len} tokens the model was trained on "
      "(the tokenizer's `model_max_length`), as jaxtune does.", "",
      "```python", "from transformers import pipeline", "",
      f"classifier = pipeline(\"text-classification\", model={here})",
      'print(classifier(["a great film", "a dull film"], truncation=True))', "```"]

  def predict(self, restored, texts: Sequence[str], *, batch_size: int) -> list[tuple[str, float]]:
    """(label, probability) of the most likely class for each text, in order; longer texts are
    cut to the run's data.seq_len, and the last batch is padded (one compilation)."""
    names = restored.label_names or tuple(str(i) for i in range(restored.num_labels))
    probs = scorer(restored, batch_size)(texts)
    return [(names[int(p.argmax())], float(p.max())) for p in probs]


def scorer(restored, batch_size: int, *, softmax: bool = True, encode=None):
  """items -> [N, labels] float32 probabilities (or raw logits, `softmax=False`) of a restored
  run (`jaxtune.finished_run.Restored`), its tokenizer loaded and its program compiled once, so
  a caller that scores many times (a GRPO reward) pays for them once.

  `encode(tokenizer, items)` gives the batch's arrays ([n, data.seq_len], n <= batch_size); by
  default items are texts, cut to the run's data.seq_len as the classification data is. Each
  call's last batch is padded with masked rows to `batch_size` (one shape, one compilation).
  """
  from jaxtune import data, sharding
  from jaxtune.data import classification

  config = restored.config
  tokenizer = data.load_tokenizer(config.data.tokenizer or config.model.source)
  pad_id = classification.pad_token_id(tokenizer)

  def encode_texts(tokenizer, texts):
    enc, _ = classification.encode(tokenizer, [str(t) for t in texts], None, config.data.seq_len)
    return classification.pad(enc, config.data.seq_len, pad_id)

  encode = encode or encode_texts
  fn = jax.jit(functools.partial(_probabilities if softmax else _logits, restored.built.eval_graphdef))

  def score(items: Sequence) -> np.ndarray:
    items = list(items)
    out = [np.zeros((0, restored.num_labels or 1), np.float32)]
    with sharding.use_mesh(restored.mesh):
      for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        batch = encode(tokenizer, chunk)
        batch = {k: np.pad(v, ((0, batch_size - len(chunk)), (0, 0))) for k, v in batch.items()}
        out.append(np.asarray(fn(restored.params, restored.built.frozen, batch))[: len(chunk)])
    return np.concatenate(out)

  return score


def _logits(graphdef, params: dict, frozen: dict | None, batch: dict) -> jax.Array:
  model = merge(graphdef, params, frozen)
  return model(batch["input_ids"], **model_kwargs(batch)).astype(jnp.float32)


def _probabilities(graphdef, params: dict, frozen: dict | None, batch: dict) -> jax.Array:
  return jax.nn.softmax(_logits(graphdef, params, frozen, batch), axis=-1)


OBJECTIVE = Classification()
