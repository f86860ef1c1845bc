"""Label errors by confident learning: rows whose given label a cheap model confidently contradicts.

1. Features: each text mean-pooled through a frozen encoder (`embed`; default the offline
   all-MiniLM-L6-v2 through jaxtune's own BERT), in batches, cached in a file the caller names
   (beside its output, never beside the input data).
2. Out-of-fold predicted probabilities: k stratified folds of a logistic regression
   (scikit-learn), so no row is scored by a model that saw its label.
3. cleanlab's `find_label_issues` (Northcutt et al., confident learning: per-class thresholds
   at the mean self-confidence, the confident joint, prune by noise rate) picks the rows, and
   `estimate_py_and_noise_matrices_from_probabilities` the noise matrix P(given | true).

cleanlab and scikit-learn come from the `quality` extra (pyproject.toml).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from jaxtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FOLDS = 5
QUALITY_EXTRA = "pip install 'jaxtune[quality]' (cleanlab, scikit-learn)"


@dataclasses.dataclass(frozen=True)
class Issue:
  index: int  # position in the rows given to `find`
  given: int
  suggested: int
  p_given: float  # out-of-fold probability of the given label
  p_suggested: float  # ... and of the suggested one (the model's confidence)


@dataclasses.dataclass
class Result:
  issues: list[Issue]  # most confident contradictions first
  noise_matrix: np.ndarray  # [K, K]: P(given label = i | true label = j), columns sum to 1
  class_counts: np.ndarray  # [K] given labels
  oof_accuracy: float  # how well the cheap model does: its flags mean little if it is poor

  def summary(self, names: tuple[str, ...]) -> dict:
    flagged = np.bincount([i.given for i in self.issues], minlength=len(names))
    return {
      "rows": int(self.class_counts.sum()), "flagged": len(self.issues),
      "share": round(len(self.issues) / max(1, int(self.class_counts.sum())), 4),
      "oof_accuracy": round(self.oof_accuracy, 4),
      "flagged_by_given_label": {n: int(c) for n, c in zip(names, flagged)},
      # noise_matrix[given][true]: the share of truly-`true` rows carrying label `given`.
      "noise_matrix": {g: {t: round(float(self.noise_matrix[i, j]), 4) for j, t in enumerate(names)}
                       for i, g in enumerate(names)},
    }


def _require():
  try:
    import cleanlab.count  # noqa: F401
    import sklearn  # noqa: F401
  except ImportError as e:
    raise ConfigError(f"label-error detection needs cleanlab and scikit-learn ({e}); "
                      f"{QUALITY_EXTRA}") from None


def embed(texts: list[str], encoder: str = "", *, seq_len: int = 64, batch_size: int = 128,
          cache: str | Path | None = None) -> np.ndarray:
  """[N, D] float32 mean-pooled embeddings of `texts` from a BERT-family HF encoder.

  `encoder` '' is the offline all-MiniLM-L6-v2. `cache`: an .npz file reused when it holds
  the same encoder, seq_len and texts (a hash of them), else (re)written.
  """
  from jaxtune.data import assets

  encoder = encoder or str(assets.minilm_dir())
  key = hashlib.sha256("\x00".join([str(Path(encoder).expanduser().resolve()), str(seq_len),
                                    *texts]).encode("utf-8", "surrogatepass")).hexdigest()
  if cache is not None and Path(cache).is_file():
    with np.load(cache) as f:
      if str(f["key"]) == key:
        log.info("label errors: embeddings reused from %s", cache)
        return f["features"]
  features = _encode(texts, encoder, seq_len, batch_size)
  if cache is not None:
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(cache) + ".partial.npz")
    np.savez(tmp, key=np.array(key), features=features)
    tmp.replace(cache)  # whole or not at all
  return features


def _encode(texts: list[str], encoder: str, seq_len: int, batch_size: int) -> np.ndarray:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxtune import hf
  from jaxtune.data.tokenizer import load_tokenizer
  from jaxtune.models import bert

  model = hf.load(encoder, task="encoder")
  tok = load_tokenizer(encoder)
  graphdef, params = nnx.split(model)

  @jax.jit
  def pooled(params, ids, mask):
    h = nnx.merge(graphdef, params)(ids, attention_mask=mask)
    return bert.mean_pool(h, mask)

  ids = tok(texts, truncation=True, max_length=seq_len, padding=False, verbose=False)["input_ids"]
  pad = tok.pad_token_id or 0
  order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths batch together
  out = np.zeros((len(texts), model.config.hidden_size), np.float32)
  for start in range(0, len(texts), batch_size):
    pick = order[start : start + batch_size]
    width = -(-max(len(ids[i]) for i in pick) // 16) * 16  # few shapes, few compilations
    a = np.full((batch_size, width), pad, np.int32)
    m = np.zeros((batch_size, width), np.int32)
    for r, i in enumerate(pick):
      a[r, : len(ids[i])], m[r, : len(ids[i])] = ids[i], 1
    out[pick] = np.asarray(pooled(params, jnp.asarray(a), jnp.asarray(m)))[: len(pick)]
  return out


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                      folds: int = FOLDS, seed: int = 0) -> np.ndarray:
  """[N, K] probabilities, each row's from a logistic regression fitted on the other folds."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() < folds:
    raise DataError(f"label errors: {folds} folds need at least {folds} rows of every label; "
                    f"counts per label id: {counts.tolist()}")
  probs = np.zeros((len(labels), num_classes), np.float64)
  for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.01))
    model.fit(features[fit], labels[fit])
    probs[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
  return probs


def find(features: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = FOLDS,
         seed: int = 0) -> Result:
  """The rows whose label the out-of-fold model confidently contradicts (see the docstring)."""
  _require()
  from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
  from cleanlab.filter import find_label_issues

  labels = np.asarray(labels, np.int64)
  probs = out_of_fold_probs(features, labels, num_classes, folds=folds, seed=seed)
  ranked = find_label_issues(labels, probs, filter_by="prune_by_noise_rate",
                             return_indices_ranked_by="self_confidence")
  _, noise, _, _ = estimate_py_and_noise_matrices_from_probabilities(labels, probs)
  issues = []
  for i in ranked:
    p = probs[i].copy()
    p[labels[i]] = -1  # the suggestion is the best label other than the given one
    s = int(np.argmax(p))
    issues.append(Issue(int(i), int(labels[i]), s, float(probs[i, labels[i]]), float(probs[i, s])))
  acc = float((probs.argmax(1) == labels).mean())
  return Result(issues, np.asarray(noise), np.bincount(labels, minlength=num_classes), acc)


@dataclasses.dataclass(frozen=True)
class Settings:
  folds: int = FOLDS
  encoder: str = ""  # '' = the offline all-MiniLM-L6-v2
  seq_len: int = 64
  seed: int = 0


def detect(rows: list, d, settings: Settings, cache: str | Path | None) -> tuple[Result, tuple[str, ...], list[int]]:
  """Label errors among classification rows (jaxtune Rows, columns as data config `d` names).

  Returns (result, label names, positions in `rows` of the rows scored: result indices point
  into this list). Rows without usable text or label are left out, as the task leaves them.
  """
  from jaxtune.data import classification
  from jaxtune.data import config as data_config

  _require()
  kept, texts, keys = [], [], []
  for i, r in enumerate(rows):
    try:
      text = classification.text_field(r.fields, d.text_column)
      if d.text_pair_column:
        text += " " + classification.text_field(r.fields, d.text_pair_column)
      keys.append(classification.label_key(r.fields.get(d.label_column), d.label_column))
    except classification.RowError:
      continue
    kept.append(i)
    texts.append(text)
  names = data_config.parse_label_names(d.label_names) or classification.infer_label_names(keys)
  index = {n: i for i, n in enumerate(names)}
  labels, scored, scored_texts = [], [], []
  for i, t, k in zip(kept, texts, keys):
    try:
      labels.append(classification.label_id(k, names, index))
    except classification.RowError:
      continue  # an unknown label: the task reports it
    scored.append(i)
    scored_texts.append(t)
  features = embed(scored_texts, settings.encoder, seq_len=settings.seq_len, cache=cache)
  result = find(features, np.asarray(labels), len(names), folds=settings.folds, seed=settings.seed)
  return result, names, scored


def listing(result: Result, names: tuple[str, ...], rows: list, scored: list[int], d) -> list[dict]:
  """One dict per flagged row, most confident first: where, text, given/suggested, confidence."""
  out = []
  for issue in result.issues:
    r = rows[scored[issue.index]]
    out.append({**r.origin(), "text": r.fields.get(d.text_column), "given": names[issue.given],
                "suggested": names[issue.suggested], "confidence": round(issue.p_suggested, 4),
                "p_given": round(issue.p_given, 4)})
  return out
