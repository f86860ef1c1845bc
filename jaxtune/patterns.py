"""Regexes from config fields (parameter and module paths), compiled with errors naming the key."""

from __future__ import annotations

import re

from jaxtune.errors import ConfigError


def compile_pattern(key: str, pattern: str) -> re.Pattern | None:
  """`pattern` compiled, None when empty ('' = off); a bad regex is an error naming `key`."""
  if not pattern:
    return None
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"{key}={pattern!r} is not a valid regex: {e}") from e
