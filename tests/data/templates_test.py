"""Chat templates in the sandbox: real templates render exactly as transformers renders them, and
hostile ones (hanging, exhausting memory, raising) end in a TemplateError naming their file."""

from __future__ import annotations

import threading
import time

import pytest

from jaxtune.data import templates
from jaxtune.errors import TemplateError
from tests.data.conftest import byte_tokenizer

CONV = [
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Hi there, <who> are you?"},
  {"role": "assistant", "content": "I am a small model.\nNice to meet you!"},
  {"role": "user", "content": "  Tell me a joke  "},
  {"role": "assistant", "content": "Why did the chicken cross the road?"},
]

LLAMA3 = (
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
  "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
  "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
  "{{ content }}{% endfor %}{% if add_generation_prompt %}"
  "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
  "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
  "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
  "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
  "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
  "roles are supported!') }}{% endif %}{% endfor %}"
)
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- for tool in tools %}
        {{- tool | tojson }}
    {%- endfor %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
# transformers' environment: trim_blocks and lstrip_blocks (no '-' here), loop controls,
# {% generation %}, namespace, dict, tojson without HTML escaping, strftime_now, Python methods.
FEATURES = """{% set ns = namespace(n=0) %}
{% for m in messages %}
  {% if m.role == 'system' %}{% continue %}{% endif %}
  {% set ns.n = ns.n + 1 %}
  {% if m.role == 'assistant' %}
    {% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}
  {% else %}
    {{ {'role': m.role, 'text': m.content.strip().upper(), 'tag': '<b>&'}|tojson }}
  {% endif %}
  {% if ns.n > 3 %}{% break %}{% endif %}
{% endfor %}
{{ ns.n }} {{ dict(a=1)|tojson }} {{ strftime_now('%Y') }} {{ '%05d|%s'|format(7, 'x') }}
{{ messages|map(attribute='role')|join(',') }} {{ '{:>6}'.format('r') }} {{ 'ab' * 3 }}
{{ 1700000000|int }} {{ '{:d}'.format(1700000000) }} {{ '-'.join(messages|map(attribute='role')) }}
{% if add_generation_prompt %}>>{% endif %}"""


@pytest.mark.parametrize("template", [LLAMA3, MISTRAL, QWEN25, FEATURES],
                         ids=["llama3", "mistral", "qwen2.5", "features"])
def test_real_templates_render_as_transformers_does(template):
  tok = byte_tokenizer(chat_template=template)
  conv = CONV[1:] if template is MISTRAL else CONV
  for k in range(1, len(conv) + 1):
    for gp in (False, True):
      want = tok.apply_chat_template(conv[:k], tokenize=False, add_generation_prompt=gp)
      assert templates.render(tok, conv[:k], add_generation_prompt=gp) == want


def test_smollm2_gguf_template_renders_as_transformers_does(smollm2_tokenizer):
  tok = smollm2_tokenizer
  assert templates.template_origin(tok).endswith(".gguf (tokenizer.chat_template)")
  for k in range(1, len(CONV) + 1):
    for gp in (False, True):
      want = tok.apply_chat_template(CONV[:k], tokenize=False, add_generation_prompt=gp)
      assert templates.render(tok, CONV[:k], add_generation_prompt=gp) == want


def test_the_error_names_the_file_the_template_came_from(tmp_path):
  from jaxtune import data

  byte_tokenizer(chat_template="{% for a in range(10) %}{{ 'x' * 999999 }}{% endfor %}"
                 ).save_pretrained(str(tmp_path))
  tok = data.load_tokenizer(str(tmp_path))
  origin = templates.template_origin(tok)
  assert origin.startswith(str(tmp_path)) and origin.endswith((".json", ".jinja"))
  with pytest.raises(TemplateError, match=rf"^{origin}: .*output-size limit"):
    templates.render(tok, CONV)


SLOW = {
  # jinja's sandbox caps range() at 100k items, but nested loops over a list call nothing.
  "nested loops": "{% set x = range(99999)|list %}{% for a in x %}{% for b in x %}{% endfor %}"
                  "{% endfor %}",
  "nested loop filters": "{% set x = range(99999)|list %}{% for a in x %}{% for b in x if false %}"
                         "{% endfor %}{% endfor %}",
  "recursive macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
                     "{{ f(60) }}",
}


@pytest.mark.parametrize("template", SLOW.values(), ids=SLOW.keys())
def test_a_template_that_hangs_hits_the_time_limit(template):
  tok = byte_tokenizer(chat_template=template)
  start = time.monotonic()
  with pytest.raises(TemplateError, match=r"time limit \(0.5 s\)"):
    templates.render(tok, CONV, time_limit=0.5)
  assert time.monotonic() - start < 3


def test_the_time_limit_holds_off_the_main_thread():
  tok = byte_tokenizer(chat_template=SLOW["nested loops"])
  errors = []

  def work():
    try:
      templates.render(tok, CONV, time_limit=0.5)
    except TemplateError as e:
      errors.append(e)

  t = threading.Thread(target=work)
  t.start()
  t.join(timeout=10)
  assert not t.is_alive() and len(errors) == 1 and "time limit" in str(errors[0])


BIG = {
  "multiplied text": ("{{ 'x' * 10**12 }}", "operator '*'"),
  "multiplied in steps": ("{% set n = 10**6 %}{{ 'x' * n * n }}", "operator '*'"),
  "doubled with ~": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                     "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "'~'"),
  "doubled with +": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                     "{% set ns.s = ns.s + ns.s %}{% endfor %}", "operator '+'"),
  "streamed output": ("{% for i in range(99999) %}{{ 'x' * 1000 }}{% endfor %}", "output-size"),
  "center filter": ("{{ 'x'|center(10**10) }}", "filter 'center'"),
  "ljust method": ("{{ 'x'.ljust(10**10) }}", "ljust()"),
  "format width": ("{{ '%9999999999s'|format('x') }}", "filter 'format'"),
  "str.format width": ("{{ '{:>9999999999}'.format('x') }}", "format()"),
  "printed list": ("{% set s = 'x' * 100000 %}{% set l = [s, s, s, s, s, s, s, s, s, s] %}"
                   "{% set m = [l, l, l, l, l, l, l, l, l, l] %}{{ m }}", "printing a value"),
  "join": ("{% set s = 'x' * 100000 %}{{ range(99999)|join(s) }}", "filter 'join'"),
  "replace": ("{% set s = 'x' * 100000 %}{{ s|replace('x', s) }}", "filter 'replace'"),
  "many values": ("{{ range(99999)|map('center', 90000)|list|length }}", "add up"),
  "set block": ("{% set s = 'x' * 999999 %}{% set b %}{% for i in range(99999) %}{{ s }}"
                "{% endfor %}{% endset %}{{ b|length }}", "output-size"),
  "big number": ("{{ 7 ** 99999 }}", "numbers"),
  "to_bytes": ("{{ (1).to_bytes(10**10, 'big') }}", "to_bytes()"),
}


@pytest.mark.parametrize("template,words", BIG.values(), ids=BIG.keys())
def test_a_template_that_exhausts_memory_hits_the_size_limit(template, words):
  tok = byte_tokenizer(chat_template=template)
  with pytest.raises(TemplateError, match="limit") as e:
    templates.render(tok, CONV, max_chars=100_000)
  assert words in str(e.value)
  assert not isinstance(e.value, templates.TemplateRejected)


def test_the_size_limit_grows_with_the_conversation():
  tok = byte_tokenizer(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
  long = [{"role": "user", "content": "y" * 300_000}]
  assert len(templates.render(tok, long, max_chars=1000)) == 300_000


def test_a_template_that_raises_rejects_the_conversation():
  tok = byte_tokenizer(chat_template=MISTRAL)
  with pytest.raises(templates.TemplateRejected, match="roles must alternate"):
    templates.render(tok, CONV)  # starts with a system message


def test_a_template_that_does_not_parse_names_the_line():
  tok = byte_tokenizer(chat_template="{{ messages }}\n{% for %}")
  with pytest.raises(TemplateError, match="does not parse: line 2"):
    templates.render(tok, CONV)


def test_the_sandbox_still_refuses_python_internals():
  tok = byte_tokenizer(chat_template="{{ messages.__class__ }}{{ ''.__class__ }}")
  assert templates.render(tok, CONV) == ""  # undefined, as in jinja's sandbox
  tok = byte_tokenizer(chat_template="{{ messages.append(1) }}")
  with pytest.raises(templates.TemplateRejected, match="SecurityError"):
    templates.render(tok, CONV)
