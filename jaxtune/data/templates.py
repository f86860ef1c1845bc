"""Chat templates rendered in a sandbox with a time limit and an output-size limit.

A chat template is code that whoever published the model wrote (tokenizer_config.json,
chat_template.jinja, a GGUF file's `tokenizer.chat_template`). transformers already renders it
in jinja2's ImmutableSandboxedEnvironment, which stops it from reaching Python internals, but
not from hanging (`{% for a in x %}{% for b in x %}{% endfor %}{% endfor %}` over a 100k list
calls nothing) or from exhausting memory (`'x' * 10**12`, a string doubled in a loop). `render`
renders the same way transformers does (same environment options, globals, filters and
template variables; tests check equality with `tokenizer.apply_chat_template`) with limits:

- Time: the Python code jinja compiles the template to is rewritten (`_Env._compile`) so that
  every loop iteration calls `_tick`, and so does every call the template makes (macros,
  recursive loops, methods), every filter and operator: together these are every way a
  template can repeat work, so a deadline checked there bounds the render. We chose this over
  signal.setitimer (main thread only, and it would fight any other user of SIGALRM) and over
  rendering in a subprocess (robust, but a process round trip per render is expensive when a
  data set renders every row's conversation prefix by prefix, and the renderer would need
  transformers' environment rebuilt there anyway). The tick costs a clock read per iteration.
- Size: the output is rendered as a stream (`Template.generate`) and counted as it arrives.
  Values inside the template are guarded where they can grow, before they are built: the
  operators `*`, `**`, `+`, `%`, the `~` concatenation, the filters, and the methods a template
  calls (`ljust`, `join`, `replace`, `format`, ...). Each checks the size of what it would make
  against the output limit, and all of them together against a total allocation budget (so a
  loop building many large strings stops too). Sizes of lists and dicts are their printed size,
  since printing is what turns a list of a million references into a string.

A template error that belongs to the conversation (the template's `raise_exception`, a runtime
error) is `TemplateRejected`; a broken template (syntax) or a limit hit is a `TemplateError`
naming the file the template came from and the limit.
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import functools
import json
import re
import time
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils

from jaxtune.errors import TemplateError

TIME_LIMIT_S = 5.0  # one render; a real template renders a conversation in well under 10 ms
MAX_CHARS = 1_000_000  # output limit: this plus INPUT_FACTOR characters per character of input
INPUT_FACTOR = 8
BUDGET_FACTOR = 64  # all values built in one render together, in output limits
MAX_INT_BITS = 4096  # integers a template may make with * and **


class TemplateRejected(TemplateError):
  """The template raised for this conversation (its own raise_exception, or an error at run time)."""


class _LimitHit(Exception):
  """A limit hit inside the template; not a ValueError/TypeError, which jinja's code catches."""


@dataclasses.dataclass
class _Budget:
  deadline: float
  cap: int  # characters any one value, and the output, may have
  left: int  # characters all values built in this render may still have
  time_limit: float
  sizes: dict = dataclasses.field(default_factory=dict)  # id -> (object, printed size)


_current: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("jaxtune_template_budget",
                                                                          default=None)
# Outside a render (jinja folds constant expressions when it compiles a template) values are
# still held to the output limit, without a deadline.
_COMPILE_BUDGET = _Budget(deadline=float("inf"), cap=MAX_CHARS, left=10**18, time_limit=0.0)


def _budget() -> _Budget:
  return _current.get() or _COMPILE_BUDGET


def _tick() -> None:
  b = _current.get()
  if b is not None and time.monotonic() > b.deadline:
    raise _LimitHit(f"the time limit ({b.time_limit:g} s)")


def _size(x, limit: int, indent: int = 0, depth: int = 0) -> int:
  """About how many characters `str(x)` (or JSON with `indent`) has; stops counting past limit."""
  if isinstance(x, str | bytes | bytearray):
    return len(x)
  if isinstance(x, bool | float | type(None)):
    return 8
  if isinstance(x, int):
    return x.bit_length() // 3 + 2
  if isinstance(x, jinja2.utils.Namespace):
    x = getattr(x, "_Namespace__attrs", {})
  if not isinstance(x, list | tuple | dict | set | frozenset):
    return 64  # functions, macros, undefined, loop objects: a short repr
  if depth > 64:
    return limit + 1
  b = _current.get()
  memo = b.sizes if b is not None and not indent else None
  if memo is not None and id(x) in memo:
    return memo[id(x)][1]
  total = 2
  items = (v for kv in x.items() for v in kv) if isinstance(x, dict) else x
  for item in items:
    total += _size(item, limit, indent, depth + 1) + 2 + indent * (depth + 1)
    if total > limit:
      return total
  if memo is not None and isinstance(x, list | dict):  # pinned: the id stays this object's
    memo[id(x)] = (x, total)
  return total


def _check(size: int, what: str, *, charge: bool = False) -> None:
  """Refuse to build a value of about `size` characters; with `charge`, it was built: count it
  against the budget of the render."""
  b = _budget()
  if size > b.cap:
    raise _LimitHit(f"the output-size limit ({b.cap} characters): {what} would make about "
                    f"{size} characters")
  if not charge:
    return
  b.left -= size
  if b.left < 0:
    raise _LimitHit(f"the output-size limit: the values the template built add up to more than "
                    f"{BUDGET_FACTOR} times the limit of {b.cap} characters")


def _charge(value, what: str):
  _check(_size(value, _budget().cap), what, charge=True)
  return value


def _format_size(fmt: str, args, kwargs) -> int:
  """An upper bound for `fmt % args` or `fmt.format(...)`: widths written in the format string
  or passed as arguments, plus every argument once per field."""
  widths = sum(int(d) for d in re.findall(r"\d+", fmt)) if re.search(r"\d", fmt) else 0
  values = [*(args if isinstance(args, tuple | list) else (args,)), *(kwargs or {}).values()]
  if isinstance(args, dict):
    values += list(args.values())
  ints = 0
  if "*" in fmt or re.search(r"\{[^{}]*\{", fmt):  # '%*s', '{:{w}}': a width from the arguments
    ints = sum(abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
  fields = fmt.count("%") + fmt.count("{") + 1
  cap = _budget().cap
  return len(fmt) + widths + fields * (sum(_size(v, cap) for v in values) + ints)


def _check_int_args(args, kwargs, what: str) -> None:
  for v in (*args, *kwargs.values()):
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _budget().cap:
      raise _LimitHit(f"the output-size limit ({_budget().cap} characters): {what} was given {v}")


def _predict_str_method(self_, name: str, args, kwargs) -> int | None:
  """Characters a str/bytes method would make, for the methods that can make more than they read."""
  cap = _budget().cap
  n = len(self_)
  if name == "join" and args:
    return _size(list(args[0]), cap) + n * len(args[0])
  if name == "replace" and len(args) >= 2:
    old, new = args[0], args[1]
    return n + (self_.count(old) + 1) * len(new) if isinstance(new, str | bytes) else n
  if name == "expandtabs":
    tab = args[0] if args else kwargs.get("tabsize", 8)
    return n + self_.count("\t" if isinstance(self_, str) else b"\t") * int(tab)
  if name == "translate" and args and isinstance(args[0], dict):
    longest = max((_size(v, cap) for v in args[0].values()), default=1)
    return n * max(longest, 1)
  if name in ("format", "format_map"):
    return _format_size(str(self_), args, kwargs)
  return None


def _guard_filter(name: str, f):
  """A filter that refuses, before it runs, to make a value over the limit, and is charged for
  what it makes."""

  @functools.wraps(f)  # keeps jinja_pass_arg (pass_context, pass_environment, ...)
  def guarded(*args, **kwargs):
    _tick()
    what = f"the filter {name!r}"
    values = [a for a in args if not isinstance(a, jinja2.runtime.Context | jinja2.Environment |
                                                   jinja2.nodes.EvalContext)]
    cap = _budget().cap
    if values:
      value, rest = values[0], values[1:]
      _check_int_args(rest, kwargs, what)  # widths, counts; the value itself may be any number
      if name == "join":
        sep = rest[0] if rest else kwargs.get("d", "")
        if not isinstance(value, list | tuple | str | dict):
          value = list(value)  # a generator (map, select): join consumes it anyway
          args = (*args[: len(args) - len(values)], value, *rest)
        _check(_size(list(value), cap) + len(str(sep)) * len(value), what)
      elif name == "replace" and len(rest) >= 2:
        s = str(value) if isinstance(value, str) else None
        if s is not None:
          _check(len(s) + (s.count(str(rest[0])) + 1) * _size(rest[1], cap), what)
      elif name == "indent":
        width = rest[0] if rest else kwargs.get("width", 4)
        s = value if isinstance(value, str) else ""
        _check(len(s) + (s.count("\n") + 1) * _size(width, cap), what)
      elif name == "wordwrap":
        wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
        s = value if isinstance(value, str) else ""
        _check(len(s) * (1 + _size(wrap, cap)), what)
      elif name in ("tojson", "pprint"):
        indent = kwargs.get("indent", rest[1] if len(rest) > 1 else None) if name == "tojson" else 1
        _check(_size(value, cap, indent=int(indent or 0)), what)
      elif name == "format" and isinstance(value, str):
        _check(_format_size(value, tuple(rest), kwargs), what)
      elif name in ("string", "urlize", "xmlattr", "escape", "e", "forceescape", "urlencode"):
        _check(_size(value, cap) * (6 if name != "string" else 1) + _size(kwargs, cap), what)
    return _charge(f(*args, **kwargs), what)

  return guarded


def _guarded_join(join):
  def guarded(seq):
    seq = list(seq)
    _tick()
    _check(_size(seq, _budget().cap), "joining text with '~'", charge=True)
    return join(seq)

  return guarded


def _finalize(value):
  """Every `{{ value }}` goes through here before `str(value)`: a list of a million references
  to one long string is small in memory but not when printed."""
  if not isinstance(value, str):
    _check(_size(value, _budget().cap), "printing a value", charge=True)
  return value


class _TickLoops(ast.NodeTransformer):
  """Adds `environment.jaxtune_tick()` to every loop of the code jinja compiled a template to,
  and makes its text joins (`~` and output of several pieces) guarded."""

  def _tick(self):
    return ast.Expr(ast.Call(ast.Attribute(ast.Name("environment", ast.Load()), "jaxtune_tick",
                                           ast.Load()), [], []))

  def visit_For(self, node):
    self.generic_visit(node)
    node.body.insert(0, self._tick())
    return node

  visit_AsyncFor = visit_While = visit_For

  def visit_comprehension(self, node):
    self.generic_visit(node)
    node.iter = ast.Call(ast.Attribute(ast.Name("environment", ast.Load()), "jaxtune_iter",
                                       ast.Load()), [node.iter], [])
    return node

  def visit_Module(self, node):
    self.generic_visit(node)
    # After `from jinja2.runtime import ... str_join ...`: rebind the joins to guarded ones.
    for i, stmt in enumerate(node.body):
      if isinstance(stmt, ast.ImportFrom) and stmt.module == "jinja2.runtime":
        node.body.insert(i + 1, ast.parse(
          "str_join = environment.jaxtune_str_join\nmarkup_join = environment.jaxtune_markup_join"))
        node.body[i + 1 : i + 2] = node.body[i + 1].body
        break
    return node


class _Generation(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag): its body as is.
  jaxtune finds assistant turns by rendering conversation prefixes, not through this tag."""

  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


class _TemplateDict:
  """transformers' `dict` global: a constructor without the type's attributes."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
  """transformers' `namespace` global: no underscore-prefixed attributes."""

  def __init__(*args, **kwargs):  # noqa: N805 - jinja's own signature trick, so namespace(self=...) works
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check_name(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
        f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}")


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # As transformers: no HTML escaping (jinja's own tojson escapes <, >, &, ').
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(format):  # noqa: A002 - the name templates call it with
  return datetime.now().strftime(format)


def _lipsum(n=5, html=True, min=20, max=100):  # noqa: A002 - jinja's signature
  if any(v > 1000 for v in (n, min, max)):
    raise _LimitHit("the output-size limit: lipsum() asked for more than 1000 paragraphs or words")
  return jinja2.utils.generate_lorem_ipsum(n, html, min, max)


class _Env(jinja2.sandbox.ImmutableSandboxedEnvironment):
  """transformers' chat template environment, with the limits of this module."""

  intercepted_binops = frozenset({"*", "**", "+", "%"})

  def __init__(self):
    super().__init__(trim_blocks=True, lstrip_blocks=True,
                     extensions=[_Generation, jinja2.ext.loopcontrols])
    self.filters["tojson"] = _tojson
    self.filters = {k: _guard_filter(k, f) for k, f in self.filters.items()}
    self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                        dict=_TemplateDict(), namespace=_TemplateNamespace, lipsum=_lipsum)
    self.jaxtune_tick = _tick
    self.finalize = _finalize
    self.concat = _guarded_join("".join)
    self.jaxtune_str_join = _guarded_join(jinja2.runtime.str_join)
    self.jaxtune_markup_join = _guarded_join(jinja2.runtime.markup_join)

  @staticmethod
  def jaxtune_iter(iterable):
    for item in iterable:
      _tick()
      yield item

  def _compile(self, source: str, filename: str):
    tree = _TickLoops().visit(ast.parse(source, filename))
    return compile(ast.fix_missing_locations(tree), filename, "exec")

  def call_binop(self, context, operator, left, right):
    _tick()
    if operator == "+" and type(left) is str and type(right) is str:  # most of what templates do
      _check(len(left) + len(right), "the operator '+'", charge=True)
      return left + right
    cap = _budget().cap
    what = f"the operator {operator!r}"
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right))
    if operator == "*":
      if ints:
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
          raise _LimitHit(f"the size limit of numbers ({MAX_INT_BITS} bits): {what}")
      else:
        for seq, n in ((left, right), (right, left)):
          if isinstance(n, int) and isinstance(seq, str | bytes | list | tuple):
            _check(_size(seq, cap) * max(n, 0), what)
    elif operator == "**" and ints and right > 0 and abs(left) > 1:
      if left.bit_length() * right > MAX_INT_BITS:
        raise _LimitHit(f"the size limit of numbers ({MAX_INT_BITS} bits): {what}")
    elif operator == "+" and not ints:
      _check(_size(left, cap) + _size(right, cap), what)
    elif operator == "%" and isinstance(left, str | bytes):
      _check(_format_size(str(left), right, None), what)
    return _charge(super().call_binop(context, operator, left, right), what)

  def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - as jinja's, see there
    _tick()
    target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
    self_ = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "a function")
    what = f"{name}()"
    if isinstance(self_, str | bytes | bytearray | int) and not isinstance(self_, bool):
      if name == "join" and args and not isinstance(args[0], list | tuple | str):
        args = (list(args[0]), *args[1:])  # a generator: counted here, joined below
      if name not in ("format", "format_map"):  # whose numbers are values, widths are checked below
        _check_int_args(args, kwargs, what)  # ljust(10**10), to_bytes(10**10), ...
      if not isinstance(self_, int):
        predicted = _predict_str_method(self_, name, args, kwargs)
        if predicted is not None:
          _check(predicted, what)
    return _charge(super().call(__context, __obj, *args, **kwargs), what)


_ENV = _Env()


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> jinja2.Template:
  return _ENV.from_string(source)


def template_origin(tokenizer) -> str:
  """The file a tokenizer's chat template came from, for messages."""
  origin = getattr(tokenizer, "jaxtune_template_origin", None)
  if origin:
    return origin
  path = Path(getattr(tokenizer, "name_or_path", "") or "")
  if str(path) and path.is_dir():
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
      if (path / name).exists():
        return str(path / name)
  return str(path) if str(path) not in ("", ".") else "the tokenizer's chat template"


def set_template_origin(tokenizer, origin: str) -> None:
  tokenizer.jaxtune_template_origin = origin


def _plain(x):
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_plain(v) for v in x]
  return x if x is None or type(x) in (str, int, float, bool) else str(x)


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False,
           time_limit: float | None = None, max_chars: int | None = None) -> str:
  """`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`,
  rendered with the limits of this module (see the module docstring)."""
  time_limit = TIME_LIMIT_S if time_limit is None else time_limit
  max_chars = MAX_CHARS if max_chars is None else max_chars
  origin = template_origin(tokenizer)
  try:
    source = tokenizer.get_chat_template()
  except ValueError as e:  # no template, or several and none named 'default'
    raise TemplateError(f"{origin}: {e}") from None
  try:
    template = _compiled(source)
  except jinja2.TemplateSyntaxError as e:
    raise TemplateError(f"{origin}: the chat template does not parse: line {e.lineno}: {e.message}; "
                        "fix the template or use another tokenizer") from None
  except _LimitHit as e:
    raise TemplateError(f"{origin}: the chat template hit {e} when compiled") from None
  messages = [{k: v for k, v in m.items() if v is not None} for m in _plain(messages)]
  context = {**_plain(dict(tokenizer.special_tokens_map)), "messages": messages, "tools": None,
             "documents": None, "add_generation_prompt": add_generation_prompt}
  cap = max_chars + INPUT_FACTOR * _size(messages, 10**15)
  budget = _Budget(deadline=time.monotonic() + time_limit, cap=cap, left=BUDGET_FACTOR * cap,
                   time_limit=time_limit)
  token = _current.set(budget)
  hit = None
  try:
    out, n = [], 0
    for chunk in template.generate(**context):
      n += len(chunk)
      if n > cap:
        raise _LimitHit(f"the output-size limit ({cap} characters)")
      _tick()
      out.append(chunk)
    return "".join(out)
  except _LimitHit as e:
    hit = str(e)
  except MemoryError:
    hit = "the memory of this machine"
  except Exception as e:  # noqa: BLE001 - jinja raises whatever the template author chose
    raise TemplateRejected(f"the chat template rejected the conversation: {type(e).__name__}: {e} "
                           f"(template from {origin})") from e
  finally:
    _current.reset(token)
  raise TemplateError(
    f"{origin}: the chat template hit {hit} while rendering a conversation of {len(messages)} "
    "messages; this template is broken or hostile: use a tokenizer with a trustworthy chat "
    "template (data.tokenizer, --tokenizer)")
