"""HF MPNet <-> jaxtune MPNet: strict config reading and writing, and the tensor table.

Key forms as for BERT (hf/bert.py): `MPNetModel` saves bare keys (`embeddings.*`,
`encoder.layer.N.*`, `encoder.relative_attention_bias.weight`, `pooler.*`, as the real
all-mpnet-base-v2 does), the head models `mpnet.`-prefixed ones plus `classifier.*` or
`lm_head.*`. `normalize_key` maps either onto the form of the task's HF class and drops what
that class would not load either: the pooler outside 'encoder' (MPNetForSequenceClassification
and MPNetForMaskedLM have none), another task's head. `lm_head.decoder.*` is tied to the word
table and `lm_head.bias` (`tied_keys`).
"""

from __future__ import annotations

from flax import nnx

from jaxtune.hf import bert as hf_bert
from jaxtune.hf import convert
from jaxtune.hf.convert import Row, require
from jaxtune.hf.errors import UnsupportedConfigError
from jaxtune.models import bert, mpnet

ARCHITECTURES = {
  "seq_cls": "MPNetForSequenceClassification", "masked_lm": "MPNetForMaskedLM",
  "encoder": "MPNetModel",
}

# HF MPNetConfig defaults, for attributes a config.json leaves out (transformers 5 writes diffs).
DEFAULTS = {
  "vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
  "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "initializer_range": 0.02,
  "layer_norm_eps": 1e-12, "relative_attention_num_buckets": 32, "pad_token_id": 1,
  "tie_word_embeddings": True,
}
BASE = ("embeddings.", "encoder.", "pooler.")


class MPNetFamily(convert.Family):
  name = "mpnet"
  model_types = ("mpnet",)
  poolings = bert.POOLINGS
  base_prefix = "mpnet."
  ignored = (r"(mpnet\.)?embeddings\.position_ids",)  # an index buffer older versions saved

  def config_from_hf(self, hf: dict, *, task: str, num_labels: int | None, where: str):
    if task not in bert.TASKS:
      raise UnsupportedConfigError(
        f"{where}: MPNet supports tasks {bert.TASKS}, not {task!r}")
    get = convert.ConfigReader(hf, DEFAULTS)
    fields = hf_bert.encoder_fields(get, task=task, where=where)
    buckets = get("relative_attention_num_buckets")
    require(buckets == mpnet.NUM_BUCKETS, where, "relative_attention_num_buckets", buckets,
            f"transformers' MPNet always computes {mpnet.NUM_BUCKETS} buckets, whatever the table "
            "holds")
    pad = get("pad_token_id")
    require(pad == mpnet.PADDING_IDX, where, "pad_token_id", pad,
            f"transformers' MPNet counts positions from padding index {mpnet.PADDING_IDX} "
            "whatever the config says, so another pad id would not be the model's padding")
    id2label = convert.label_names(hf, task=task, num_labels=num_labels, where=where)
    cfg = mpnet.MPNetConfig(**fields, num_labels=len(id2label), id2label=id2label)
    convert.check_config_keys(hf, used=get.used, harmless=set(), where=where)
    return cfg

  def config_to_hf(self, cfg: mpnet.MPNetConfig, *, task: str) -> dict:
    # Mean pooling: a sentence-transformers pipeline around an MPNetModel (hf.sbert).
    arch = "MPNetModel" if task == "seq_cls" and cfg.pooling == "mean" else ARCHITECTURES[task]
    hf = {
      **hf_bert.encoder_config_to_hf(cfg, arch, "mpnet"),
      "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
      "pad_token_id": mpnet.PADDING_IDX,
      "bos_token_id": 0,
      "eos_token_id": 2,
    }
    if task == "seq_cls":
      hf.update(convert.label_config(cfg.id2label))
    return hf

  def build(self, cfg, *, task, param_dtype, compute_dtype, rngs: nnx.Rngs) -> mpnet.MPNet:
    return mpnet.MPNet(cfg, task=task, param_dtype=param_dtype, compute_dtype=compute_dtype,
                       rngs=rngs)

  def table(self, cfg: mpnet.MPNetConfig, *, task: str) -> list[Row]:
    b = "" if task == "encoder" else "mpnet."
    linear, norm = hf_bert.linear_rows(cfg.initializer_range), hf_bert.norm_rows
    e = f"{b}embeddings."
    rows = [
      Row(f"{e}word_embeddings.weight", "embeddings/word_embeddings/embedding"),
      Row(f"{e}position_embeddings.weight", "embeddings/position_embeddings/embedding"),
      *norm(f"{e}LayerNorm", "embeddings/LayerNorm"),
      Row(f"{b}encoder.relative_attention_bias.weight", "relative_attention_bias/embedding"),
    ]
    for i in range(cfg.num_hidden_layers):
      h, p = f"{b}encoder.layer.{i}.", f"layers/{i}/"
      for proj in ("q", "k", "v", "o"):
        rows += linear(f"{h}attention.attn.{proj}", f"{p}attention/attn/{proj}")
      rows += norm(f"{h}attention.LayerNorm", f"{p}attention/LayerNorm")
      rows += hf_bert.feed_forward_rows(h, p, linear)
    if task == "encoder":
      # Some encoder checkpoints were saved without a pooler; HF initialises it then, as do we.
      rows += linear("pooler.dense", "pooler/dense", init_if_missing=True)
    if task == "seq_cls" and cfg.pooling == "mean":
      rows += linear("classifier", "classifier", init_if_missing=True)
    elif task == "seq_cls":
      rows += linear("classifier.dense", "classifier/dense", init_if_missing=True)
      rows += linear("classifier.out_proj", "classifier/out_proj", init_if_missing=True)
    if task == "masked_lm":
      rows += linear("lm_head.dense", "lm_head/dense")
      rows += norm("lm_head.layer_norm", "lm_head/layer_norm")
      rows.append(Row("lm_head.bias", "lm_head/bias"))
    return rows

  def tied_keys(self, cfg: mpnet.MPNetConfig, *, task: str) -> dict[str, str]:
    if task != "masked_lm":
      return {}  # normalize_key drops lm_head.* for the other tasks
    return {"lm_head.decoder.weight": "mpnet.embeddings.word_embeddings.weight",
            "lm_head.decoder.bias": "lm_head.bias"}

  def normalize_key(self, key: str, *, task: str) -> str | None:
    bare = key.removeprefix("mpnet.")
    if bare.startswith(BASE):
      if task != "encoder" and bare.startswith("pooler."):
        return None
      return bare if task == "encoder" else "mpnet." + bare
    for head, head_task in (("classifier.", "seq_cls"), ("lm_head.", "masked_lm")):
      if bare.startswith(head):
        return bare if task == head_task else None
    return key  # unknown: the loader reports it as unexpected, naming the file


FAMILY = MPNetFamily()
