"""dpolab: train and study language models with preference optimization."""

__version__ = "0.1.0"
