"""visalign: align generative models with human preferences."""

__version__ = "0.1.0.dev0"
