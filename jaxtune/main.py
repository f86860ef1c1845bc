"""The `jaxtune` command: `jaxtune <subcommand> [flags]`; each subcommand's --help lists its flags.

Subcommands live in jaxtune/cli/<name>.py and define their absl flags on import, so a
subcommand's --help shows only its own flags.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from jaxtune import xla_flags

SUBCOMMANDS = {
  "train": "fine-tune a model: jaxtune train --config=configs/<recipe>.py --workdir=DIR",
  "eval": "evaluate a run's best weights on a data file: jaxtune eval --workdir=DIR --data=FILE",
  "generate": "generate text with a tuned or HF model: jaxtune generate --workdir=DIR --prompt=..",
  "export": "write a run's model as an HF directory: jaxtune export --workdir=DIR --out=DIR",
  "data": "audit or clean a data set: jaxtune data audit|clean --data=FILE_OR_NAME --out=DIR",
  "tune": "hyperparameter search: jaxtune tune --config=.. --search=configs/search/<space>.py",
  "report": "a run as one HTML page: jaxtune report --workdir=DIR [--compare=DIR2 ...]",
}


def usage() -> str:
  lines = ["usage: jaxtune <subcommand> [flags]   (jaxtune <subcommand> --help for its flags)", ""]
  lines += [f"  {name:10s} {text}" for name, text in SUBCOMMANDS.items()]
  return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1]
  if name not in SUBCOMMANDS:
    near = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    print(f"jaxtune: error: unknown subcommand {name!r}; {hint}(jaxtune --help lists them: "
          f"{', '.join(SUBCOMMANDS)})", file=sys.stderr)
    sys.exit(2)
  # Before any subcommand can start a JAX backend: XLA reads XLA_FLAGS only once.
  xla_flags.apply()
  module = importlib.import_module(f"jaxtune.cli.{name}")
  module.run([f"jaxtune {name}", *argv[2:]])


if __name__ == "__main__":
  run()
