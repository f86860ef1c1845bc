"""DPO-family losses and their gradients against TRL 1.16, both computed here.

One tiny random Llama policy and one reference are written with transformers and loaded by
jaxtune; the same (prompt, chosen, rejected) token pairs go through both. TRL's side:
- sigmoid, IPO, hinge: a real DPOTrainer (tiny byte tokenizer, one-row data set), its
  `_compute_loss` on the concatenated [chosen; rejected] batch, i.e. TRL's own forward, fused
  log-prob head, reference forward and loss.
- SimPO, ORPO: `get_batch_loss_metrics` of TRL's experimental CPOTrainer (loss_type='simpo',
  cpo_alpha=0) and ORPOTrainer, made without __init__ and holding the attributes they read;
  their concatenated forward runs the torch model.
- sigmoid with label smoothing (cDPO): TRL 1.16's DPOTrainer no longer smooths 'sigmoid', so
  TRL's smoothed sigmoid (CPOTrainer.cpo_loss) is applied to the DPO log-ratios, the per-sequence
  log-probs taken by TRL's get_batch_logps from the torch models' logits.
jaxtune's side: logits of the jaxtune models -> `sequence_logps` -> the loss. Gradients are
compared on three shared parameters (embedding, first query projection, LM head).
"""

from __future__ import annotations

import collections
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxtune import hf  # noqa: E402
from jaxtune.hf import convert  # noqa: E402
from jaxtune.objectives import dpo_losses as L  # noqa: E402
from tests.data.conftest import byte_tokenizer  # noqa: E402

B, T = 3, 12
# jaxtune parameter path -> (HF parameter name, transpose to HF's layout)
SHARED = {"embed_tokens/embedding": ("model.embed_tokens.weight", False),
          "layers/0/self_attn/q_proj/kernel": ("model.layers.0.self_attn.q_proj.weight", True),
          "lm_head/kernel": ("lm_head.weight", True)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tok = byte_tokenizer()
  cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 pad_token_id=tok.pad_token_id, max_position_embeddings=64)
  models = []
  for seed in (0, 1):  # policy, reference
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager",
                                                   dtype=torch.float32).eval()
    with torch.no_grad():
      for p in m.parameters():
        p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(f"llama{seed}")
    m.save_pretrained(path)
    models.append((m, hf.load(path)))
  return tok, models, _pairs(tok.pad_token_id, len(tok))


def _pairs(pad: int, vocab: int):
  """[2B, T] ids, attention mask and answer mask: the chosen rows, then the rejected ones.

  Right padded (as TRL's collator); prompts of 2-4 tokens, answers of 2-8, lengths differing
  between the chosen and rejected answer of a pair.
  """
  rng = np.random.default_rng(0)
  ids = np.full((2 * B, T), pad, np.int64)
  attn = np.zeros((2 * B, T), np.int64)
  answer = np.zeros((2 * B, T), np.int64)
  for i in range(B):
    prompt = rng.integers(10, vocab - 10, 2 + i)
    for row, n in ((i, 3 + 2 * i), (B + i, 8 - 2 * i)):
      seq = np.concatenate([prompt, rng.integers(10, vocab - 10, n)])
      ids[row, :len(seq)], attn[row, :len(seq)], answer[row, len(prompt):len(seq)] = seq, 1, 1
  return ids, attn, answer


@pytest.fixture(scope="module")
def jax_side(setup):
  return _jax_runner(setup, setup[2][2])


def _jax_runner(setup, answer):
  """(policy log-prob sums, ref log-prob sums, grads(loss_fn)) with one compiled forward + VJP.

  The gradient of a loss is the chain rule through the per-sequence log-probs: the loss's
  gradient with respect to them (small, eager) pulled back through the model by one VJP that
  is compiled once for all the losses.
  """
  _, models, (ids, attn, _) = setup
  ids, attn, answer = jnp.asarray(ids), jnp.asarray(attn), jnp.asarray(answer)
  policy, ref = models[0][1], models[1][1]
  ref_logps, _ = L.sequence_logps(ref(ids, attn), ids, answer)
  graphdef, params, rest = nnx.split(policy, nnx.Param, ...)

  def seqs(params):
    logits = nnx.merge(graphdef, params, rest)(ids, attn)
    # answer log-probs and counts, then all-token ones (TRL's ORPO SFT term)
    return (*L.sequence_logps(logits, ids, answer), *L.sequence_logps(logits, ids, attn))

  @jax.jit
  def outputs_and_pullback(params, cotangent):
    outs, pull = jax.vjp(seqs, params)
    return outs, pull(cotangent)[0]

  zeros = tuple(jnp.zeros(2 * B) for _ in range(4))
  outs, _ = outputs_and_pullback(params, zeros)

  def run(loss_fn):
    """loss_fn(policy_logps, policy_counts, ref_logps, full_nll) -> PairLoss; (means, grads)."""
    def loss(o):
      nll = -jnp.sum(o[2][:B]) / jnp.sum(o[3][:B])  # chosen rows, all tokens, one token mean
      out = loss_fn(o[0], o[1], ref_logps, nll)
      return out.loss_sum / out.weight, out

    (_, out), cotangent = jax.value_and_grad(loss, has_aux=True)(outs)
    _, grads = outputs_and_pullback(params, cotangent)
    paths = convert.param_paths(grads)
    return L.pair_means(out), {k: np.asarray(paths[k][...] if isinstance(paths[k], nnx.Variable)
                                             else paths[k]) for k in SHARED}

  return run


def _torch_grads(model):
  named = dict(model.named_parameters())
  out = {}
  for k, (name, transpose) in SHARED.items():
    g = named[name].grad.detach().numpy()
    out[k] = g.T if transpose else g
  model.zero_grad(set_to_none=True)
  return out


def _compare(tag, got_means, want_loss, got_grads, want_grads, want_metrics=None):
  dl = abs(float(got_means["loss"]) - want_loss)
  dg = max(float(np.max(np.abs(got_grads[k] - want_grads[k]))) for k in SHARED)
  scale = max(float(np.max(np.abs(want_grads[k]))) for k in SHARED)
  print(f"{tag}: loss {want_loss:.6f}, |dloss| = {dl:.2e}, max |dgrad| = {dg:.2e} (max |grad| {scale:.2e})")
  # float32: the summed log-probs are ~-40 here, whose rounding step is ~4e-6
  assert dl < 5e-6 and dg < 5e-6 * max(1.0, scale) and scale > 1e-4
  for key, want in (want_metrics or {}).items():
    assert float(got_means[key]) == pytest.approx(want, abs=1e-5), key


@pytest.fixture(scope="module")
def dpo_trainer(setup, tmp_path_factory):
  from datasets import Dataset

  tok, models, _ = setup
  args = trl.DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), report_to=[], bf16=False,
                       activation_checkpointing=False, use_cpu=True, beta=0.1)
  data = Dataset.from_dict({"prompt": ["a b"], "chosen": [" c"], "rejected": [" d"]})
  return trl.DPOTrainer(model=models[0][0], ref_model=models[1][0], args=args, train_dataset=data,
                        processing_class=tok)


def _trl_dpo_loss(t, models, ids, attn, answer, kinds, weights, beta):
  t.loss_types, t.loss_weights, t.beta = kinds, weights, beta
  t._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
  inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
            "completion_mask": torch.from_numpy(answer)}
  want = t._compute_loss(t.model, inputs, False)
  want.backward()
  return want, _torch_grads(models[0][0]), t._metrics["train" if t.model.training else "eval"]


@pytest.mark.parametrize("kind,beta", [("sigmoid", 0.1), ("ipo", 0.5), ("hinge", 0.5)])
def test_dpo_matches_trl_trainer(setup, jax_side, dpo_trainer, kind, beta):
  _, models, (ids, attn, answer) = setup
  want, want_grads, m = _trl_dpo_loss(dpo_trainer, models, ids, attn, answer, [kind], [1.0], beta)

  def fn(lp, n, ref, _):
    return L.dpo_loss(lp[:B], lp[B:], ref[:B], ref[B:], beta=beta, kind=kind,
                      chosen_counts=n[:B], rejected_counts=n[B:])

  got, grads = jax_side(fn)
  _compare(f"dpo {kind}", got, want.item(), grads, want_grads,
           {k: m[k][-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                  "rewards/margins", "logps/chosen", "logps/rejected")})


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_dpo_sft_term_matches_trl_sft_loss_type(setup, dpo_trainer, kind):
  """sft_weight (RPO) against TRL's loss_type=[kind, 'sft'], loss_weights=[1, w].

  TRL takes the SFT term's token mean over the whole batch, jaxtune per pair (so micro-batches
  add up); the two agree when every chosen answer is equally long, so the chosen rows' answer
  mask keeps their first 3 tokens here (the rest stays attended, unscored).
  """
  _, models, (ids, attn, answer) = setup
  answer = answer.copy()
  for row in range(B):
    cols = np.flatnonzero(answer[row])
    answer[row, cols[3:]] = 0
  beta, w = 0.2, 0.7
  want, want_grads, m = _trl_dpo_loss(dpo_trainer, models, ids, attn, answer, [kind, "sft"],
                                      [1.0, w], beta)

  def fn(lp, n, ref, _):
    return L.dpo_loss(lp[:B], lp[B:], ref[:B], ref[B:], beta=beta, kind=kind, sft_weight=w,
                      chosen_counts=n[:B], rejected_counts=n[B:])

  got, grads = _jax_runner(setup, answer)(fn)
  _compare(f"dpo {kind} + sft", got, want.item(), grads, want_grads,
           {k: m[k][-1] for k in ("rewards/chosen", "rewards/margins", "logps/chosen")})


def _experimental(cls, **attrs):
  t = object.__new__(cls)  # skips __init__: the loss methods read only these attributes
  t.is_encoder_decoder, t.aux_loss_enabled = False, False
  t.accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)
  for k, v in attrs.items():
    setattr(t, k, v)
  return t


def _trl_batch(ids, attn, answer):
  labels = np.where(answer == 1, ids, -100)
  batch = {}
  for name, rows in (("chosen", slice(0, B)), ("rejected", slice(B, None))):
    batch[f"{name}_input_ids"] = torch.from_numpy(ids[rows])
    batch[f"{name}_attention_mask"] = torch.from_numpy(attn[rows])
    batch[f"{name}_labels"] = torch.from_numpy(labels[rows])
  return batch


def test_simpo_matches_trl_cpo(setup, jax_side):
  from trl.experimental.cpo import CPOTrainer

  tok, models, (ids, attn, answer) = setup
  beta, gamma, ls = 2.0, 0.5, 0.1
  t = _experimental(CPOTrainer, loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=ls,
                    cpo_alpha=0.0, alpha=0.0, pad_token_id=tok.pad_token_id)
  want, metrics = t.get_batch_loss_metrics(models[0][0], _trl_batch(ids, attn, answer))
  want.backward()
  want_grads = _torch_grads(models[0][0])

  def fn(lp, n, _, __):
    return L.simpo_loss(lp[:B], lp[B:], n[:B], n[B:], beta=beta, gamma=gamma, label_smoothing=ls)

  got, grads = jax_side(fn)
  _compare("simpo", got, want.item(), grads, want_grads,
           {k: metrics[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                    "rewards/margins")})


def test_orpo_matches_trl_orpo(setup, jax_side):
  from trl.experimental.orpo import ORPOTrainer

  tok, models, (ids, attn, answer) = setup
  lam = 0.25
  t = _experimental(ORPOTrainer, beta=lam, padding_value=tok.pad_token_id)
  t.store_metrics = lambda *a, **k: None
  want, metrics = t.get_batch_loss_metrics(models[0][0], _trl_batch(ids, attn, answer))
  want.backward()
  want_grads = _torch_grads(models[0][0])

  def fn(lp, n, _, nll):
    return L.orpo_loss(lp[:B], lp[B:], n[:B], n[B:], lam=lam, sft_nll=nll)

  got, grads = jax_side(fn)
  _compare("orpo", got, want.item(), grads, want_grads,
           {k: metrics[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                    "nll_loss", "log_odds_ratio", "log_odds_chosen")})


def test_label_smoothed_sigmoid_matches_trl_formula(setup, jax_side):
  from trl.experimental.cpo import CPOTrainer
  from trl.experimental.orpo import ORPOTrainer

  _, models, (ids, attn, answer) = setup
  beta, ls = 0.3, 0.2
  labels = torch.from_numpy(np.where(answer == 1, ids, -100))

  def torch_logps(model, grad):
    with torch.set_grad_enabled(grad):
      logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attn)).logits
    return ORPOTrainer.get_batch_logps(logits, labels)

  lp, ref = torch_logps(models[0][0], True), torch_logps(models[1][0], False)
  t = _experimental(CPOTrainer, loss_type="sigmoid", beta=beta, label_smoothing=ls, alpha=0.0)
  losses, _, _ = t.cpo_loss(lp[:B] - ref[:B], lp[B:] - ref[B:])
  want = losses.mean()
  want.backward()
  want_grads = _torch_grads(models[0][0])

  def fn(lp_, _, ref_, __):
    return L.dpo_loss(lp_[:B], lp_[B:], ref_[:B], ref_[B:], beta=beta, label_smoothing=ls)

  got, grads = jax_side(fn)
  _compare("dpo sigmoid label_smoothing=0.2", got, want.item(), grads, want_grads)
