"""The project's error types: a user's mistake or a problem of their environment, never a bug.

Each `jaxtune` subcommand prints a `JaxtuneError` as one line, `jaxtune <subcommand>: error:
<message>`, and exits with code 2; any other exception is a bug and keeps its traceback. A message
names what is at fault (the file and row, the config key, the flag or the path) and says what to
do. The subclasses also derive from the builtin type their callers have always caught
(ValueError, RuntimeError, OSError), so `except ValueError` around a config check still works.
"""

from __future__ import annotations


class JaxtuneError(Exception):
  """A problem the user can fix: printed as one line by the CLI, never with a traceback."""


class ConfigError(JaxtuneError, ValueError):
  """A config key, recipe variant or flag with a value jaxtune cannot use."""


class DataError(JaxtuneError, ValueError):
  """A data problem, naming the file and row (or the data set) and why."""


class CheckpointError(JaxtuneError, ValueError):
  """A checkpoint (jaxtune's or an HF/GGUF model) that cannot be used as it is."""


class TemplateError(JaxtuneError, ValueError):
  """A chat template that fails, hangs or produces too much output."""


class OutputError(JaxtuneError, ValueError):
  """An output path that would overwrite something jaxtune did not write, or its own input."""


class WorkdirError(JaxtuneError, RuntimeError):
  """A workdir in use by another process, or one whose run cannot continue as asked."""


class StorageError(JaxtuneError, OSError):
  """A disk that is full or read-only, or a path that cannot be written."""


class NonFiniteError(JaxtuneError, RuntimeError):
  """A loss, gradient or update became NaN/Inf and the config says to stop."""
