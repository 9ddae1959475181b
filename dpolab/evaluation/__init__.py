"""Evaluation: generation and task metrics."""

from .generation import generate

__all__ = ["generate"]
