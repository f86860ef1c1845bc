"""One module per `jaxtune` subcommand; each defines its own absl flags."""

from __future__ import annotations

import sys

from absl import app, flags


def run_app(module_name: str, main, argv: list[str]) -> None:
  """absl's app.run, with --help listing this subcommand's own flags.

  absl's --help lists the flags of the __main__ module, which for the `jaxtune` entry point
  has none; the subcommand's flags live in its own module.
  """
  if any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
    print(f"usage: {argv[0]} [flags]\n\n{sys.modules[module_name].__doc__.strip()}\n")
    print(flags.FLAGS.module_help(module_name))
    sys.exit(0)
  app.run(main, argv=argv)
