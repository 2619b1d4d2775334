"""Algorithms. `core` holds the pure RL math; one file per algorithm composes the stages."""

from rlkit.algos import core

__all__ = ["core"]
