"""Fixtures for data tests: tiny byte-level tokenizers saved as HF directories, config builder.

Byte-level BPE without merges: every byte is a token, so any text round-trips exactly through
decode, offsets are per character, and building one takes milliseconds.
"""

from __future__ import annotations

import pytest

from jaxtune import config as run_config
from jaxtune.data import assets
from jaxtune.data.config import default_data_config

CHATML = (
  "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_tokenizer(*, pair_template: bool = False, chat_template: str | None = CHATML):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
  specials = ["<s>", "</s>", "<pad>", "[CLS]", "[SEP]", "<|im_start|>", "<|im_end|>"]
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.add_special_tokens(specials)
  if pair_template:
    ids = {t: tk.token_to_id(t) for t in ("[CLS]", "[SEP]")}
    tk.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=list(ids.items()),
    )
  # BERT-like tokenizers list token_type_ids among their model inputs; causal ones do not.
  names = ["input_ids", "token_type_ids", "attention_mask"] if pair_template else ["input_ids", "attention_mask"]
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                pad_token="<pad>", model_input_names=names)
  if chat_template:
    tok.chat_template = chat_template
  return tok


@pytest.fixture(scope="session")
def causal_tok_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("causal_tok")
  byte_tokenizer().save_pretrained(str(path))
  return str(path)


@pytest.fixture(scope="session")
def pair_tok_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("pair_tok")
  byte_tokenizer(pair_template=True, chat_template=None).save_pretrained(str(path))
  return str(path)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
  try:
    path = assets.smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  from jaxtune.data import load_tokenizer

  return load_tokenizer(str(path))


def make_config(**data):
  c = run_config.default()
  c.data = default_data_config()
  for k, v in data.items():
    c.data[k] = v
  return c


@pytest.fixture
def make_cfg():
  return make_config
