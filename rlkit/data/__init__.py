"""Data for rlkit: prompt datasets, the built-in arithmetic task with rule rewards,
and the offline tokenizer / tiny-model builders.

Names are imported lazily (as in `rlkit/__init__.py`) so that importing the
arithmetic rewards does not pay for transformers.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_LAZY = {
    # tokenizer.py
    "build_char_tokenizer": "rlkit.data.tokenizer",
    # models.py
    "TINY_PRESETS": "rlkit.data.presets",
    "TinyModelPreset": "rlkit.data.presets",
    "build_tiny_model": "rlkit.data.models",
    "save_tiny_model": "rlkit.data.models",
    "load_model_and_tokenizer": "rlkit.data.models",
    "count_parameters": "rlkit.data.models",
    # arithmetic.py
    "ArithmeticTask": "rlkit.data.arithmetic",
    "arithmetic_reward": "rlkit.data.arithmetic",
    "arithmetic_cost": "rlkit.data.arithmetic",
    "score_texts": "rlkit.data.arithmetic",
    # datasets.py
    "load_prompt_dataset": "rlkit.data.datasets",
    "load_prompt_split": "rlkit.data.datasets",
    "encode_prompts": "rlkit.data.datasets",
    "decode_responses": "rlkit.data.datasets",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlkit.data' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
