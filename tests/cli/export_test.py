"""`jaxtune export` after a LoRA SFT run, and the proof that the export decodes as jaxtune does.

A tiny random Llama (written by transformers) with the real SmolLM2 tokenizer is fine-tuned for
a few steps with LoRA on a prompt/completion file; `jaxtune export --merge_lora` writes an HF
directory, transformers loads it, and its greedy `generate` gives the same tokens as
`jaxtune generate --workdir` on the same prompts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest

from jaxtune import config as jt_config
from jaxtune import train
from jaxtune.data import assets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # end to end: a training run and two `jaxtune` subprocesses

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["the capital of france is", "one two three", "hello"]


def jaxtune_cli(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run([sys.executable, "-m", "jaxtune.main", *args], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  try:
    gguf = assets.smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  tmp = tmp_path_factory.mktemp("sft")
  cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True, bos_token_id=1, eos_token_id=0)
  # eos 0 (<|endoftext|>) in the model's configs, as Qwen's base models have, while the chat
  # template ends turns with <|im_end|> (2): the export must stop on both.
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(tmp / "base")
  words = "one two three four five six seven eight nine ten eleven twelve".split()
  rows = [{"prompt": f"count {i}:", "completion": " " + " ".join(words[i % 4:])} for i in range(64)]
  (tmp / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = jt_config.default()
  c.model.source = str(tmp / "base")
  c.model.compute_dtype = "float32"
  c.data.kind = "sft"
  c.data.source = str(tmp / "sft.jsonl")
  c.data.tokenizer = str(gguf)
  c.data.seq_len = 32
  c.lora.rank = 4
  c.mesh.data = 1
  c.train.steps = 6
  c.train.batch_size = 8
  c.train.eval_every = 0
  c.train.progress = False
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 2
  c.train.text_samples = 2
  c.train.text_sample_tokens = 5
  workdir = tmp / "run"
  train.train_and_evaluate(c, workdir)
  return workdir


def test_export_decodes_like_jaxtune_generate(sft_run, tmp_path):
  out = tmp_path / "hf"
  jaxtune_cli("export", f"--workdir={sft_run}", f"--out={out}", "--merge_lora")
  card = huggingface_hub.ModelCard.load(out / "README.md")
  assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-generation")
  assert card.data.base_model is None  # a local directory with no hub id in its metadata
  assert "## Final metrics" in card.text and "| val | loss |" in card.text
  assert '"rank": 4' in card.text  # the training config
  assert str(sft_run.parent) not in card.content and "/tmp" not in card.content
  gc = transformers.GenerationConfig.from_pretrained(out)
  assert (gc.bos_token_id, gc.eos_token_id, gc.pad_token_id) == (1, [0, 2], 2)
  gen = jaxtune_cli("generate", f"--workdir={sft_run}", *[f"--prompt={p}" for p in PROMPTS],
                    "--max_new_tokens=12", f"--out={tmp_path / 'gen.jsonl'}")
  assert "tokens/s" in gen.stderr
  ours = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]

  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(out)
  for prompt, row in zip(PROMPTS, ours, strict=True):
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():  # stop and pad ids from generation_config.json alone
      ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                           do_sample=False)
    want = ref[0, ids.shape[1]:].tolist()
    assert row["tokens"] == want, prompt
    assert row["completion"] == tok.decode(want, skip_special_tokens=True)
  # generate stops on the chat end-of-turn token: make <|im_end|> the likeliest next token.
  with torch.no_grad():
    model.get_output_embeddings().weight[2] *= 1000
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                         do_sample=False)
  new = ref[0, ids.shape[1]:].tolist()
  assert new[-1] == 2 and len(new) < 12, new  # it ended there, not at max_new_tokens


def test_export_lora_adapter(sft_run, tmp_path):
  """merge_lora=False writes a PEFT adapter directory with the tokenizer and a card."""
  from jaxtune import export

  run = export.load_run(sft_run, step=6)
  out = export.save(run.model, tmp_path / "adapter", run.tokenizer, run.config, workdir=sft_run,
                    merge_lora=False)
  adapter_config = json.loads((out / "adapter_config.json").read_text())
  assert adapter_config["r"] == 4
  assert adapter_config["base_model_name_or_path"] == str((sft_run.parent / "base").resolve())
  assert huggingface_hub.ModelCard.load(out / "README.md").data.library_name == "peft"
  assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()
  # PEFT loads the base from adapter_config.json by itself and computes jaxtune's logits.
  peft = pytest.importorskip("peft")
  model = peft.AutoPeftModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = np.array([run.tokenizer("one two three four")["input_ids"]], np.int32)
  with torch.no_grad():
    ref = model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(run.model(ids)), ref, atol=1e-4, rtol=1e-4)


def test_training_wrote_text_samples(sft_run):
  """train.text_samples: greedy completions of validation prompts before training (step 0, to
  compare with) and at every evaluation, in text.jsonl and TensorBoard's text tab."""
  from tensorboard.backend.event_processing import event_accumulator

  rows = [json.loads(x) for x in (sft_run / "text.jsonl").read_text().splitlines()]
  samples = [r for r in rows if r["tag"] == "samples/validation"]
  assert [r["step"] for r in samples] == [0, 6]
  for sample in samples:
    text = sample["text"]
    assert text.startswith("1. `'count") and "\n\n2. `'count" in text and " → " in text, text
  acc = event_accumulator.EventAccumulator(str(sft_run / "tb"), size_guidance={"tensors": 0})
  acc.Reload()
  events = acc.Tensors("samples/validation/text_summary")
  assert [e.step for e in events] == [0, 6]
  assert events[0].tensor_proto.string_val[0].decode() == samples[0]["text"]


def test_export_gguf_through_the_cli(sft_run, tmp_path):
  """`jaxtune export --format=gguf`: the LoRA run as one Q8_0 file that transformers' GGUF loader
  reads to the run's logits (Q8_0 rounding), with the run's tokenizer and chat template; a
  second export to the same path is refused and leaves the file as it was."""
  from jaxtune import export

  out = tmp_path / "gguf" / "tuned.gguf"
  proc = jaxtune_cli("export", f"--workdir={sft_run}", "--format=gguf", "--quant=q8_0", f"--out={out}")
  assert "(GGUF, q8_0)" in proc.stdout
  run = export.load_run(sft_run)
  ids = np.array([run.tokenizer("count 3: one two")["input_ids"]])
  want = np.asarray(run.model(ids))
  model = transformers.AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name,
                                                            dtype=torch.float32).eval()
  with torch.no_grad():
    got = model(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=6e-2 * np.abs(want).max(), rtol=0)
  tok = transformers.AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
  assert tok("count 3: one two")["input_ids"] == ids[0].tolist()
  assert tok.chat_template == run.tokenizer.chat_template
  before = out.read_bytes()
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  again = subprocess.run([sys.executable, "-m", "jaxtune.main", "export", f"--workdir={sft_run}",
                          "--format=gguf", f"--out={out}"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
  assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
  assert "never overwrites it; choose another --out" in again.stderr.strip().splitlines()[-1]
  assert out.read_bytes() == before
