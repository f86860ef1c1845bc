"""One module per `jaxtune` subcommand; each defines its own absl flags.

`run_app` runs a subcommand: it parses the flags itself (absl's own parser prints `FATAL`
and ml_collections' config flags print chained tracebacks) so that every mistake on the
command line, and every `JaxtuneError` the subcommand raises, is one line `jaxtune <sub>:
error: ...` with exit code 2. Anything else is a bug: its traceback, a line saying so, exit 1.
It also sets up the console's logging (`jaxtune.console`) from absl's --verbosity.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from absl import app, flags

from jaxtune import errors
from jaxtune.console import CONSOLE, configure_logging

_DEBUG = flags.DEFINE_boolean(
  "debug", False, "On an error, show the Python traceback too (as JAXTUNE_DEBUG=1 does).")
# absl's own flag, whose help describes absl's default (INFO once flags are parsed); jaxtune
# is quiet unless asked (jaxtune.console.configure_logging).
flags.FLAGS["verbosity"].help = (
  "Log detail: not given, warnings and errors only (besides jaxtune's progress, evaluation "
  "and result lines); 0 adds INFO and 1 DEBUG messages, from jaxtune and the libraries it "
  "uses (JAX, orbax). See docs/troubleshooting.md.")


def debug_requested(argv: list[str]) -> bool:
  """--debug on the command line or JAXTUNE_DEBUG=1: show tracebacks of user errors too.

  Read before the flags are parsed: a flag that fails to parse must know it already."""
  on_line = any(re.fullmatch(r"--?debug(=(1|true|True|t|yes))?", a) for a in argv[1:])
  return on_line or os.environ.get("JAXTUNE_DEBUG", "") not in ("", "0")


def _reporting(prog: str, fn, debug: bool):
  """`fn` with the project's errors printed as one line (exit 2; after their traceback with
  --debug) and anything else reported as the bug it is (traceback, exit 1)."""

  def wrapped(*args):
    try:
      return fn(*args)
    except errors.JaxtuneError as e:
      CONSOLE.end_line()  # a progress bar's line, if one is open
      if debug:
        traceback.print_exc()
      print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
      if not debug:
        # The user's one line is the last: a library's background thread that logs while the
        # interpreter shuts down (orbax's async checkpoint signalling: "cannot schedule new
        # futures after shutdown", seen under load in CI) must not add a second.
        logging.disable(logging.CRITICAL)
      sys.exit(2)
    except (KeyboardInterrupt, SystemExit):
      CONSOLE.end_line()
      raise
    except Exception:
      CONSOLE.end_line()
      traceback.print_exc()
      print(f"{prog}: internal error: this is a bug in jaxtune, not in your input; please report "
            "it with the traceback above", file=sys.stderr)
      sys.exit(1)

  return wrapped


def _guarded(prog: str, main, debug: bool):
  """`main` run by app.run, reporting errors as `_reporting` does."""
  return _reporting(prog, main, debug)


def run_app(module_name: str, main, argv: list[str], *, positional: bool = False) -> None:
  """absl's app.run, with --help listing this subcommand's own flags and errors as one line.

  absl's --help lists the flags of the __main__ module, which for the `jaxtune` entry point
  has none; the subcommand's flags live in its own module. `positional`: the subcommand
  takes arguments besides flags (`jaxtune data audit`); otherwise one is refused.
  """
  for name in ("debug", "verbosity"):
    flags.FLAGS.register_key_flag_for_module(module_name, flags.FLAGS[name])
  if any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
    print(f"usage: {argv[0]} [flags]\n\n{sys.modules[module_name].__doc__.strip()}\n")
    print(flags.FLAGS.module_help(module_name))
    sys.exit(0)
  prog = argv[0]
  debug = debug_requested(argv)

  def parse(args):
    return parse_flags(module_name, args, positional=positional)

  def main_logged(args):
    verbosity = flags.FLAGS["verbosity"]  # app.run sets it to 0 (INFO) when not given: not ours
    configure_logging(verbosity.value if verbosity.present else None)
    return main(args)

  app.run(_guarded(prog, main_logged, debug), argv=argv, flags_parser=_reporting(prog, parse, debug))


# ---------------------------------------------------------------------------------- flags


def parse_flags(module_name: str, argv: list[str], *, positional: bool = False) -> list[str]:
  """flags.FLAGS(argv), with each way a command line can be wrong raised as a ConfigError that
  names the flag (and the closest correct one), the recipe file and line, or the config key."""
  recipes = _recipe_flags(argv)
  for name, value in recipes:
    _check_recipe_file(name, value)
  try:
    rest = flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    raise errors.ConfigError(_unknown_flag(module_name, argv[0], e)) from e
  except flags.IllegalFlagValueError as e:
    raise _illegal_value(module_name, argv, recipes, e) from e
  except flags.Error as e:
    raise errors.ConfigError(str(e)) from e
  except errors.JaxtuneError:
    raise
  except Exception as e:  # a recipe that fails to load, or an override of an unknown key
    found = _recipe_failure(recipes, e) or _unknown_key(argv, recipes)
    if found is None:
      raise
    raise found from e
  for name, value in recipes:
    config = flags.FLAGS[name].value
    if config is None:
      raise errors.ConfigError(f"--{name}={value}: get_config() returned None; it must return the "
                               "ConfigDict (a missing return statement?)")
    if type(config).__name__ == "_ErrorConfig":  # ml_collections defers an IOError to first use
      cause = config.__dict__["_error"]
      raise (_recipe_failure([(name, value)], cause) or errors.ConfigError(
        f"--{name}={value}: the file failed to load: {_root(cause)}")) from cause
  if len(rest) > 1 and not positional:
    raise errors.ConfigError(f"unexpected argument {rest[1]!r}: flags take the form --name=value "
                             f"({argv[0]} --help lists them)")
  return rest


def _recipe_flags(argv: list[str]) -> list[tuple[str, str]]:
  """(flag name, value) of each config-file flag (--config, --search) given on the line."""
  given = {}
  for name in list(flags.FLAGS):
    if flags.FLAGS[name].parser.flag_type() != "config object":
      continue
    for i, a in enumerate(argv[1:], 1):
      if re.fullmatch(f"--?{re.escape(name)}=.*", a):
        given[name] = a.split("=", 1)[1]
      elif re.fullmatch(f"--?{re.escape(name)}", a) and i + 1 < len(argv):
        given[name] = argv[i + 1]
  return list(given.items())


def _check_recipe_file(name: str, value: str) -> None:
  """The file behind --config=PATH[:variant] exists and is valid Python (named with the line
  of a syntax error), checked before ml_collections runs it."""
  path = Path(value.split(":", 1)[0])
  if not str(path) or str(path) == ".":
    raise errors.ConfigError(f"--{name}: no file given; name a python recipe file, e.g. "
                             f"--{name}=configs/tiny.py")
  if not path.is_file():
    what = "a directory, not a file" if path.is_dir() else "no such file"
    near = []
    if path.parent.is_dir():
      near = difflib.get_close_matches(path.name, [p.name for p in path.parent.glob("*.py")], n=3)
    hint = (f"; did you mean {', '.join(str(path.parent / n) for n in near)}?" if near
            else "; give the recipe's path (relative to the current directory or absolute)")
    raise errors.ConfigError(f"--{name}={value}: {path}: {what}{hint}")
  try:
    compile(path.read_bytes(), str(path), "exec")
  except SyntaxError as e:
    raise errors.ConfigError(f"--{name}={value}: {path} line {e.lineno}: {e.msg}; fix the python "
                             "in the recipe file") from e
  except ValueError as e:  # null bytes: not a python file at all
    raise errors.ConfigError(f"--{name}={value}: {path} is not a python file ({e})") from e


def _root(e: BaseException) -> BaseException:
  """The exception that started a chain (absl and ml_collections re-raise others on top)."""
  seen = set()
  while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return e


def _recipe_failure(recipes, e: BaseException) -> errors.JaxtuneError | None:
  """A ConfigError naming the recipe file and line when `e` was raised while the recipe ran
  (an import that fails, a NameError, a recipe's own ValueError for a bad variant)."""
  root = _root(e)
  for name, value in recipes:
    if isinstance(root, AttributeError) and f"'{name}_config' has no attribute 'get_config'" in str(root):
      return errors.ConfigError(f"--{name}={value}: the file defines no get_config(arg=None) function; "
                                "a recipe returns its ConfigDict from one")
    path = Path(value.split(":", 1)[0]).resolve()
    lines = [f.lineno for f in traceback.extract_tb(root.__traceback__)
             if Path(f.filename).resolve() == path]
    if isinstance(root, errors.JaxtuneError) or (lines and isinstance(root, ValueError)):
      msg = str(root)
      return errors.ConfigError(msg if str(path.name) in msg else f"--{name}={value}: {msg}")
    if lines:
      return errors.ConfigError(
        f"--{name}={value}: the recipe fails at {value.split(':', 1)[0]} line {lines[-1]}: "
        f"{type(root).__name__}: {root}; fix the recipe (--debug shows the traceback)")
  return None


def _config_keys(config, prefix: str = "") -> list[str]:
  """Every dotted key of a ConfigDict, branches and leaves."""
  out = []
  for k, v in config.items():
    out.append(prefix + k)
    if hasattr(v, "items") and hasattr(v, "lock"):
      out += _config_keys(v, f"{prefix}{k}.")
  return out


def _unknown_key(argv: list[str], recipes) -> errors.ConfigError | None:
  """The override `--config.a.b=v` whose key the recipe lacks, with the closest known keys."""
  for name, value in recipes:
    overrides = [m.group(2) for a in argv[1:]
                 if (m := re.match(rf"--?(no)?{re.escape(name)}\.([^=\[]+)", a))]
    if not overrides:
      continue
    try:
      config = flags.FLAGS[name].parser.parse(value)
    except Exception:  # noqa: BLE001 - the recipe itself fails: not what is diagnosed here
      return None
    keys = _config_keys(config)
    for key in overrides:
      if key in keys:
        continue
      parent = key.rpartition(".")[0]
      same_depth = [k for k in keys if k.count(".") == key.count(".")]
      near = difflib.get_close_matches(key, same_depth, n=2, cutoff=0.75)
      if near:
        hint = f"did you mean {' or '.join(near)}?"
      elif parent in keys:
        hint = f"{parent} has {', '.join(k.rpartition('.')[2] for k in keys if k.rpartition('.')[0] == parent)}"
      else:
        hint = f"the top-level sections are {', '.join(k for k in keys if '.' not in k)}"
      return errors.ConfigError(f"--{name}.{key}: no such config key in {value}; {hint}")
  return None


def _module_flags(module_name: str) -> list[str]:
  return sorted({f.name for f in flags.FLAGS.get_key_flags_for_module(module_name)})


def _unknown_flag(module_name: str, prog: str, e: flags.UnrecognizedFlagError) -> str:
  name = e.flagname
  known = _module_flags(module_name)
  near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
  if not near and name.startswith("no"):  # --nofoo for a boolean --foo
    near = [f"no{n}" for n in difflib.get_close_matches(name[2:], known, n=3, cutoff=0.6)]
  hint = f"did you mean {' or '.join('--' + n for n in near)}? " if near else ""
  return f"--{name}: unknown flag; {hint}({prog} --help lists the flags)"


def _illegal_value(module_name: str, argv, recipes, e: flags.IllegalFlagValueError):
  msg = str(e)
  if "must have a value other than None" in msg:
    missing = [n for n in _module_flags(module_name) if flags.FLAGS[n].value is None and any(
      "must have a value other than None" in getattr(v, "message", "")
      for v in flags.FLAGS[n].validators)]
    for n, value in recipes:
      if n in missing:
        return errors.ConfigError(f"--{n}={value}: get_config() returned None; it must return the "
                                  "ConfigDict (a missing return statement?)")
    names = " and ".join(f"--{n}" for n in missing) or msg
    what = "are required flags" if len(missing) > 1 else "is a required flag"
    return errors.ConfigError(f"{names} {what}; {argv[0]} --help describes the flags")
  if "Error whilst parsing config file" in msg:
    found = _recipe_failure(recipes, e)
    if found is not None:
      return found
    return errors.ConfigError(f"{msg.splitlines()[0]} {_root(e)}")
  m = re.match(r"flag --([\w.\-]+)=", msg)
  if m is None:
    return errors.ConfigError(msg)
  name = m.group(1)
  value = next((a.split("=", 1)[1] for a in reversed(argv) if re.match(f"--?{re.escape(name)}=", a)), "")
  head = f"flag --{name}={value}: "
  reason = msg[len(head):] if msg.startswith(head) else msg.partition(": ")[2]
  if reason.startswith("invalid literal for int()"):
    reason = "expected an integer"
  elif reason.startswith("could not convert string to float"):
    reason = "expected a number"
  elif "Non-boolean argument" in reason:
    reason = "expected true or false"
  fl = flags.FLAGS[name] if name in flags.FLAGS else None
  if fl is not None and "." in name and fl.default is not None:
    reason += f" (the recipe has {name.split('.', 1)[1]}={fl.default!r})"
  return errors.ConfigError(f"--{name}={value}: {reason}")
