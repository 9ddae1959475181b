"""The training engine: one loop for SFT and preference training, on Hugging Face Accelerate."""

from .trainer import Trainer, TrainError, train

__all__ = ["Trainer", "TrainError", "train"]
