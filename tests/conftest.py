"""Test setup: fake 8 CPU devices before JAX starts, so sharding is tested without hardware."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _logging_enabled_again():
  """A user error caught by the CLI in-process switches logging off (jaxtune/cli/__init__.py:
  the process is about to exit and its one line must stay the last). Here the process goes on
  to the next test, which must see logging as a fresh process would."""
  yield
  logging.disable(logging.NOTSET)
