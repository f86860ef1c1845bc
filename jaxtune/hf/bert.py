"""HF BERT <-> jaxtune Bert: strict config reading and writing, and the tensor table.

Key forms: `BertModel` saves bare keys (`embeddings.word_embeddings.weight`, as the real
all-MiniLM-L6-v2 does), the head models `bert.`-prefixed ones plus `classifier.*` or `cls.*`.
`normalize_key` maps either onto the form of the task's HF class (bare for 'encoder', prefixed
otherwise) and drops what that class would not load either: `cls.*` outside masked_lm, the
pooler for masked_lm (BertForMaskedLM has none) and NSP's `cls.seq_relationship`. The MLM
decoder tensors are tied to the word table and `cls.predictions.bias` (`tied_keys`): a stored
copy is skipped when it equals them, as transformers does. TF-era `LayerNorm.gamma` /
`beta` names are read as `weight` / `bias`, as HF does.
"""

from __future__ import annotations

from flax import nnx

from jaxtune.hf import convert
from jaxtune.hf.convert import Row, require
from jaxtune.hf.errors import UnsupportedConfigError
from jaxtune.models import bert, layers

ARCHITECTURES = {
  "seq_cls": "BertForSequenceClassification", "masked_lm": "BertForMaskedLM", "encoder": "BertModel",
}

# HF BertConfig defaults, for attributes a config.json leaves out (transformers 5 writes diffs).
DEFAULTS = {
  "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
  "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
  "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
  "classifier_dropout": None, "is_decoder": False, "add_cross_attention": False,
  "tie_word_embeddings": True, "position_embedding_type": "absolute",
}
BASE = ("embeddings.", "encoder.", "pooler.")


class BertFamily(convert.Family):
  name = "bert"
  model_types = ("bert",)
  poolings = bert.POOLINGS
  base_prefix = "bert."
  ignored = (r"(bert\.)?embeddings\.(position_ids|token_type_ids)",)  # index buffers

  def config_from_hf(self, hf: dict, *, task: str, num_labels: int | None, where: str):
    if task not in bert.TASKS:
      raise UnsupportedConfigError(f"{where}: BERT supports tasks {bert.TASKS}, not {task!r}")
    get = convert.ConfigReader(hf, DEFAULTS)
    fields = encoder_fields(get, task=task, where=where)
    pos = get("position_embedding_type")
    require(pos == "absolute", where, "position_embedding_type", pos,
            "only absolute position embeddings are implemented")
    dec = get("is_decoder")
    require(not dec, where, "is_decoder", dec, "BERT as a causal decoder is not implemented")
    xattn = get("add_cross_attention")
    require(not xattn, where, "add_cross_attention", xattn, "cross-attention is not implemented")
    cdrop = get("classifier_dropout")
    id2label = convert.label_names(hf, task=task, num_labels=num_labels, where=where)
    cfg = bert.BertConfig(
      **fields,
      type_vocab_size=int(get("type_vocab_size")),
      classifier_dropout=None if cdrop is None else float(cdrop),
      num_labels=len(id2label),
      id2label=id2label,
      pad_token_id=get("pad_token_id"),
    )
    convert.check_config_keys(hf, used=get.used, harmless=set(), where=where)
    return cfg

  def config_to_hf(self, cfg: bert.BertConfig, *, task: str) -> dict:
    # Mean pooling is no transformers class: the export is a sentence-transformers pipeline
    # around a BertModel (hf.sbert), which keeps the label names here.
    arch = "BertModel" if task == "seq_cls" and cfg.pooling == "mean" else ARCHITECTURES[task]
    hf = {
      **encoder_config_to_hf(cfg, arch, "bert"),
      "type_vocab_size": cfg.type_vocab_size,
      "classifier_dropout": cfg.classifier_dropout,
      "pad_token_id": cfg.pad_token_id,
    }
    if task == "seq_cls":
      hf.update(convert.label_config(cfg.id2label))
    return hf

  def build(self, cfg, *, task, param_dtype, compute_dtype, rngs: nnx.Rngs) -> bert.Bert:
    return bert.Bert(cfg, task=task, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)

  def table(self, cfg: bert.BertConfig, *, task: str) -> list[Row]:
    b = "" if task == "encoder" else "bert."
    linear, norm = linear_rows(cfg.initializer_range), norm_rows
    e = f"{b}embeddings."
    rows = [
      Row(f"{e}word_embeddings.weight", "embeddings/word_embeddings/embedding"),
      Row(f"{e}position_embeddings.weight", "embeddings/position_embeddings/embedding"),
      Row(f"{e}token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding"),
      *norm(f"{e}LayerNorm", "embeddings/LayerNorm"),
    ]
    for i in range(cfg.num_hidden_layers):
      h, p = f"{b}encoder.layer.{i}.", f"layers/{i}/"
      for proj in ("query", "key", "value"):
        rows += linear(f"{h}attention.self.{proj}", f"{p}attention/self/{proj}")
      rows += linear(f"{h}attention.output.dense", f"{p}attention/output/dense")
      rows += norm(f"{h}attention.output.LayerNorm", f"{p}attention/output/LayerNorm")
      rows += feed_forward_rows(h, p, linear)
    if task == "encoder" or (task == "seq_cls" and cfg.pooling == "cls"):
      # Some encoder checkpoints were saved without a pooler; HF initialises it then, as do we.
      rows += linear(f"{b}pooler.dense", "pooler/dense", init_if_missing=True)
    if task == "seq_cls":
      rows += linear("classifier", "classifier", init_if_missing=True)
    if task == "masked_lm":
      c = "cls.predictions."
      rows += linear(f"{c}transform.dense", "cls/predictions/transform/dense")
      rows += norm(f"{c}transform.LayerNorm", "cls/predictions/transform/LayerNorm")
      rows.append(Row(f"{c}bias", "cls/predictions/bias"))
    return rows

  def unused(self, cfg: bert.BertConfig, *, task: str) -> tuple[str, ...]:
    # A mean-pooled classifier has no pooler (a sentence encoder's stored one is not read).
    return (r"(bert\.)?pooler\..*",) if task == "seq_cls" and cfg.pooling == "mean" else ()

  def tied_keys(self, cfg: bert.BertConfig, *, task: str) -> dict[str, str]:
    if task != "masked_lm":
      return {}  # normalize_key drops cls.* for the other tasks
    return {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}

  def normalize_key(self, key: str, *, task: str) -> str | None:
    if key.endswith(".gamma") or key.endswith(".beta"):
      key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
    bare = key.removeprefix("bert.")
    if bare.startswith(BASE):
      if task == "masked_lm" and bare.startswith("pooler."):
        return None
      return bare if task == "encoder" else "bert." + bare
    if bare.startswith("classifier."):
      return bare if task == "seq_cls" else None
    if bare.startswith("cls."):
      return bare if task == "masked_lm" and bare.startswith("cls.predictions.") else None
    return key  # unknown: the loader reports it as unexpected, naming the file


# Config attributes BERT and MPNet share, read and written alike.
_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings")
_FLOAT_FIELDS = ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "initializer_range")


def encoder_fields(get: convert.ConfigReader, *, task: str, where: str) -> dict:
  """The shared attributes as model-config fields, typed and checked: a known activation, heads
  that divide the width, a tied decoder for masked_lm."""
  act = get("hidden_act")
  require(isinstance(act, str) and act in layers.ACTIVATIONS, where, "hidden_act", act,
          f"known activations are {sorted(layers.ACTIVATIONS)}")
  tied = get("tie_word_embeddings")
  require(bool(tied) or task != "masked_lm", where, "tie_word_embeddings", tied,
          "the masked-LM decoder is tied to the word embeddings")
  fields = {**{k: int(get(k)) for k in _INT_FIELDS}, **{k: float(get(k)) for k in _FLOAT_FIELDS}}
  D, N = fields["hidden_size"], fields["num_attention_heads"]
  require(D % N == 0, where, "num_attention_heads", N, f"must divide hidden_size={D}")
  return {**fields, "hidden_act": act}


def encoder_config_to_hf(cfg, arch: str, model_type: str) -> dict:
  return {"architectures": [arch], "model_type": model_type, "tie_word_embeddings": True,
          **{k: getattr(cfg, k) for k in (*_INT_FIELDS, *_FLOAT_FIELDS, "hidden_act")}}


def linear_rows(std: float):
  """linear(hf, param, **row_kw): the rows of an nn.Linear (weight, bias); `std` inits a head."""

  def linear(hf: str, param: str, **kw) -> list[Row]:
    # nn.Linear stores [out, in]; jaxtune kernels are [in, out].
    return [Row(f"{hf}.weight", f"{param}/kernel", convert.transpose, convert.transpose,
                init_std=std, **kw),
            Row(f"{hf}.bias", f"{param}/bias", **kw)]

  return linear


def norm_rows(hf: str, param: str) -> list[Row]:
  return [Row(f"{hf}.weight", f"{param}/scale"), Row(f"{hf}.bias", f"{param}/bias")]


def feed_forward_rows(hf_layer: str, param_layer: str, linear) -> list[Row]:
  """A layer's intermediate and output blocks (bert.BertLayer; MPNet's are the same)."""
  h, p = hf_layer, param_layer
  return [*linear(f"{h}intermediate.dense", f"{p}intermediate/dense"),
          *linear(f"{h}output.dense", f"{p}output/dense"),
          *norm_rows(f"{h}output.LayerNorm", f"{p}output/LayerNorm")]


FAMILY = BertFamily()
