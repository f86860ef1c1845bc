"""One module per `jaxtune` subcommand; each defines its own absl flags."""

from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags

from jaxtune import errors


def debug_requested(argv: list[str]) -> bool:
  """--debug on the command line or JAXTUNE_DEBUG=1: show tracebacks of user errors too."""
  return "--debug" in argv or os.environ.get("JAXTUNE_DEBUG", "") not in ("", "0")


def _guarded(prog: str, main, debug: bool):
  """`main` with the project's errors printed as one line (exit 2) and anything else reported
  as the bug it is (traceback, exit 1)."""

  def wrapped(argv):
    try:
      return main(argv)
    except errors.JaxtuneError as e:
      if debug:
        raise
      print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
      sys.exit(2)
    except (KeyboardInterrupt, SystemExit):
      raise
    except Exception:
      traceback.print_exc()
      print(f"{prog}: internal error: this is a bug in jaxtune, not in your input; please report "
            "it with the traceback above", file=sys.stderr)
      sys.exit(1)

  return wrapped


def run_app(module_name: str, main, argv: list[str]) -> None:
  """absl's app.run, with --help listing this subcommand's own flags and errors as one line.

  absl's --help lists the flags of the __main__ module, which for the `jaxtune` entry point
  has none; the subcommand's flags live in its own module.
  """
  if any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
    print(f"usage: {argv[0]} [flags]\n\n{sys.modules[module_name].__doc__.strip()}\n")
    print(flags.FLAGS.module_help(module_name))
    sys.exit(0)
  debug = debug_requested(argv)
  argv = [a for a in argv if a != "--debug"]
  app.run(_guarded(argv[0], main, debug), argv=argv)
