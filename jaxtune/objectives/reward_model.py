"""Reward models (`model.task='reward'`): one scalar per prompt + answer, trained on preferences.

The model is a sequence classifier with one output (`num_labels=1`) on any family: decoders
score the last token that is not the data's pad (`classification.pool_where_data_pads`, as HF's
`...ForSequenceClassification`), encoders pool as a classifier does (`model.pooling`).

Rows to arrays: preference pairs (`data.kind='preference'`, `jaxtune.data.preference`: prompt,
chosen and rejected answers as text or chat messages, each pair truncated alike), the chosen and
rejected sequences of a pair stacked on a second axis: `input_ids` / `attention_mask`
[N, 2, L] (index 0 chosen, 1 rejected), so batching, sharding and micro-batches treat a pair as
one row. Loss: Bradley-Terry, -log sigmoid(r_chosen - r_rejected) per pair
(`dpo_losses.bradley_terry_loss`, TRL's RewardTrainer). Metrics on train and validation:
pairwise accuracy (the share of pairs whose chosen answer scores higher), the mean margin
r_chosen - r_rejected, and the mean rewards of each side. A finished run exports a
`...ForSequenceClassification` with num_labels=1 and scores (prompt, answer) pairs (`scorer`),
encoded as its data was: chat messages when its tokenizer has a chat template, else text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import ConfigError
from jaxtune.objectives import classification, dpo_losses
from jaxtune.objectives.base import Objective, model_kwargs

LABEL = "reward"  # the one output's name (run.json's label_names, an export's id2label)
SIDES = ("chosen", "rejected")
EXTRAS = {
  "accuracy": "rewards/accuracies",
  "margin": "rewards/margins",
  "chosen": "rewards/chosen",
  "rejected": "rewards/rejected",
}


def stack_pairs(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Preference arrays (`chosen_input_ids`, ... [N, L]) as [N, 2, L] `input_ids` and
  `attention_mask` (chosen, rejected); other per-row arrays (example_id) kept; loss masks
  dropped (a reward model scores whole sequences)."""
  out = {
    k: np.stack([arrays[f"{s}_{k}"] for s in SIDES], axis=1)
    for k in ("input_ids", "attention_mask")
  }
  out.update({k: v for k, v in arrays.items() if not k.startswith(SIDES)})
  return out


def _pairs_as_rows(batch: dict) -> tuple[jax.Array, dict]:
  """[2B, L] ids and model inputs: the B chosen sequences, then the B rejected ones."""
  flat = {
    k: jnp.concatenate([batch[k][:, 0], batch[k][:, 1]]) for k in ("input_ids", "attention_mask")
  }
  return flat["input_ids"], model_kwargs(flat)


def _terms(model, batch: dict, dropout_rng=None) -> dpo_losses.PairLoss:
  ids, kwargs = _pairs_as_rows(batch)
  scores = model(ids, **kwargs, dropout_rng=dropout_rng)[:, 0].astype(jnp.float32)
  B = batch["input_ids"].shape[0]
  return dpo_losses.bradley_terry_loss(scores[:B], scores[B:], valid=batch.get("valid"))


class RewardModel(Objective):
  name = "reward"
  head = "seq_cls"  # a one-output sequence classifier
  fixed_length = True
  pipeline_tag = "text-classification"
  auto_classes = ("AutoModelForSequenceClassification", "AutoPeftModelForSequenceClassification")
  base_metrics = ("loss", "accuracy", "margin", "chosen", "rejected")
  line_metrics = ("accuracy", "margin", "loss")
  table_metrics = ("loss", "accuracy", "margin")

  # ------------------------------------------------------------------------- rows to arrays
  @staticmethod
  def _check_kind(config) -> None:
    if config.data.kind != "preference":
      raise ConfigError(
        f"config: data.kind={config.data.kind!r}: model.task='reward' trains on "
        "preference pairs; set data.kind='preference' (prompt, chosen, rejected)"
      )

  @staticmethod
  def _pairs(splits):
    """The splits with pairs stacked, and the one output's size and name (run.json records it,
    so a finished run rebuilds its one-output head)."""
    from jaxtune.data.pipeline import Dataset

    return dataclasses.replace(
      splits,
      splits={k: Dataset(stack_pairs(ds.arrays)) for k, ds in splits.splits.items()},
      num_labels=1,
      label_names=(LABEL,),
    )

  def splits(self, config, workdir):
    self._check_kind(config)  # before any data is read
    return self._pairs(super().splits(config, workdir))

  def eval_split(self, config, source, workdir):
    self._check_kind(config)
    return self._pairs(super().eval_split(config, source, workdir))

  # ---------------------------------------------------------------------------------- loss
  def batch_weight(self, batch, cfg):
    return jnp.asarray(batch["input_ids"].shape[0], jnp.float32)

  def loss_terms(self, model, batch, dropout_rng, cfg):
    out = _terms(model, batch, dropout_rng)
    return out.loss_sum, out.weight, {k: (out.sums[v], out.weight) for k, v in EXTRAS.items()}

  def eval_sums(self, model, batch, lm_loss_chunk=-1, **_):
    out = _terms(model, batch)
    return {
      "loss_sum": out.loss_sum,
      "weight": out.weight,
      "extras": {k: (out.sums[v], out.weight) for k, v in EXTRAS.items()},
    }

  # ------------------------------------------------------------------------------- metrics
  def metrics(self, sums, label_names=(), order=None):
    res = {
      "loss": sums.loss_sum / max(sums.weight, 1e-9),
      **sums.extra_means(),
      "examples": int(sums.weight),
    }
    return res, {}

  # -------------------------------------------------------------------------- finished run
  def usage(self, config, here, *, sbert, chat):
    text = (
      'tokenizer.apply_chat_template([{"role": "user", "content": prompt}, '
      '{"role": "assistant", "content": answer}], tokenize=False)'
      if chat
      else "prompt + answer"
    )
    return [
      "A reward model: one score per prompt + answer (higher is preferred), the logit of its "
      f"single output. It reads at most {config.data.seq_len} tokens.",
      "",
      "```python",
      "import torch",
      "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
      "",
      f"path = {here}",
      "tokenizer = AutoTokenizer.from_pretrained(path)",
      "model = AutoModelForSequenceClassification.from_pretrained(path)",
      'prompt, answer = "Review a film.", "A delight from start to finish."',
      f"text = {text}",
      "with torch.no_grad():",
      '  score = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False,'
      " truncation=True)).logits[0, 0]"
      if chat
      else '  score = model(**tokenizer(text, return_tensors="pt", truncation=True)).logits[0, 0]',
      "```",
    ]

  def predict(self, restored, texts: Sequence[tuple[str, str]], *, batch_size: int) -> list[float]:
    """The score of each (prompt, answer) pair, in order (see `scorer`)."""
    prompts, answers = zip(*texts) if texts else ((), ())
    return scorer(restored, batch_size)(prompts, answers).tolist()

  def scorer(self, restored, batch_size: int):
    return scorer(restored, batch_size)


def scorer(restored, batch_size: int):
  """(prompts, answers) -> [N] float32 scores of a restored reward run, its tokenizer loaded and
  its program compiled once. Each pair is encoded as the run's preference data was
  (`preference.encode_pair`, cut to data.seq_len alike): as a chat (the prompt a user message,
  the answer an assistant message) when the tokenizer has a chat template, else as text. An
  answer the data reader would refuse (empty, say: a policy may write one) is scored as the
  rendered prompt + answer, its last data.seq_len tokens."""
  from jaxtune.data import preference, templates
  from jaxtune.data.classification import RowError, pad, pad_token_id

  seq_len = restored.config.data.seq_len

  def encode_one(tokenizer, prompt: str, answer: str, chat: bool) -> list[int]:
    if chat:
      row = {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": answer}],
      }
    else:
      row = {"prompt": prompt, "chosen": answer}
    row["rejected"] = row["chosen"]
    try:
      return preference.encode_pair(tokenizer, row, seq_len=seq_len)[0]["chosen_input_ids"]
    except RowError:
      text = templates.render(tokenizer, row["prompt"] + row["chosen"]) if chat else prompt + answer
      return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])[-seq_len:]

  def encode(tokenizer, pairs):
    chat = isinstance(getattr(tokenizer, "chat_template", None), str)
    ids = [encode_one(tokenizer, str(p), str(a), chat) for p, a in pairs]
    return pad({"input_ids": ids}, seq_len, pad_token_id(tokenizer))

  logits = classification.scorer(restored, batch_size, softmax=False, encode=encode)

  def score(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(answers):
      raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers")
    return logits(list(zip(prompts, answers)))[:, 0]

  return score


OBJECTIVE = RewardModel()
