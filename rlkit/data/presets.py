"""Named shapes of the tiny offline models (kept free of heavy imports: the CLI lists them in --help)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinyModelPreset:
    """The shape of one tiny decoder-only model (parameter counts assume the 103-token char vocabulary)."""

    arch: str
    """Model family: "qwen2" (q/k/v biases) or "llama" (no biases)."""
    hidden_size: int
    """Width of the residual stream."""
    num_layers: int
    """Number of decoder layers."""
    num_heads: int
    """Attention heads; head_dim = hidden_size // num_heads."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention when smaller than num_heads)."""
    intermediate_size: int
    """Width of the SwiGLU feed-forward layer."""
    tie_embeddings: bool = True
    """Share the input embedding with the LM head (saves vocab * hidden parameters)."""
    max_positions: int = 2048
    """Longest sequence (prompt + response) the rotary embedding is configured for."""
    approx_params: str = ""
    """Human-readable size, checked by tests/test_models.py."""


TINY_PRESETS: dict[str, TinyModelPreset] = {
    # ~0.19M: the fixture model every area's tests use; as small as still behaves like a transformer.
    "qwen2-tiny": TinyModelPreset("qwen2", 64, 3, 4, 2, 256, approx_params="0.19M"),
    # ~1.06M: the benchmark reference model.
    "qwen2-1m": TinyModelPreset("qwen2", 128, 4, 4, 4, 512, approx_params="1.06M"),
    # ~3.3M: between the reference and the largest.
    "qwen2-3m": TinyModelPreset("qwen2", 192, 6, 6, 2, 768, approx_params="3.3M"),
    # ~8.9M: the largest tiny model (wide FFN, as in real small LMs).
    "qwen2-9m": TinyModelPreset("qwen2", 256, 4, 4, 4, 2560, approx_params="8.9M"),
    # Llama twins, for code paths (vLLM, FSDP wrapping) that must work on both families.
    "llama-tiny": TinyModelPreset("llama", 64, 3, 4, 2, 256, approx_params="0.19M"),
    "llama-1m": TinyModelPreset("llama", 128, 4, 4, 4, 512, approx_params="1.06M"),
}
