"""Errors raised for bad checkpoints and configs; messages name the file, tensor or attribute."""


class CheckpointError(ValueError):
  """A checkpoint file or tensor that cannot be used as it is."""


class UnsupportedConfigError(ValueError):
  """An HF config attribute (or value) that jaxtune does not implement."""
