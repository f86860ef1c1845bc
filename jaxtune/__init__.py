"""jaxtune: fine-tune language models with JAX and Flax NNX."""

__version__ = "0.1.0"
