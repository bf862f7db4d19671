"""prodai: take a trained transformers model to production and keep it there."""

__version__ = "0.1.0"
