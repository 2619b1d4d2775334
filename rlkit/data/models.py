"""Tiny Qwen2/Llama models built from configs, and the one loading path for real models.

Tests and the demo never download: `save_tiny_model` writes a randomly
initialised model (fixed seed) plus the character tokenizer into a folder that
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` load
like any hub checkpoint. Everything else in rlkit loads models through
`load_model_and_tokenizer`, so a tiny folder and `"Qwen/Qwen2.5-0.5B-Instruct"`
take the same code path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from rlkit.data.presets import TINY_PRESETS, TinyModelPreset  # noqa: F401  (re-exported)
from rlkit.data.tokenizer import build_char_tokenizer


def tiny_model_config(
    preset: str,
    vocab_size: int,
    *,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PretrainedConfig:
    """The transformers config of a named preset (see `TINY_PRESETS`)."""
    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny model preset {preset!r}; choose one of {sorted(TINY_PRESETS)}")
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    p = TINY_PRESETS[preset]
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[p.arch]
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads,
        max_position_embeddings=p.max_positions,
        tie_word_embeddings=p.tie_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def build_tiny_model(
    preset: str,
    vocab_size: int,
    seed: int = 0,
    *,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised fp32 model of a preset; the same `seed` gives bit-identical weights.

    The global torch RNG is left untouched (initialisation runs under `fork_rng`),
    so building a model inside a test does not shift the test's own random draws.
    """
    config = tiny_model_config(
        preset, vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # generate() stops at EOS and pads finished rows with the pad token.
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = bos_token_id
    model.generation_config.eos_token_id = eos_token_id
    return model.eval()


def save_tiny_model(preset: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny model of `preset` and the char tokenizer into folder `path`; returns the path.

    The folder loads with `AutoModelForCausalLM.from_pretrained(path)` and
    `AutoTokenizer.from_pretrained(path)` (or `load_model_and_tokenizer(path)`).
    """
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(
        preset,
        len(tokenizer),
        seed,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tied embedding/LM head counts once)."""
    return sum(p.numel() for p in model.parameters())


def _looks_like_local_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything absolute, relative-dotted, home-based
    # or with more than one slash can only be meant as a local folder.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _hub_offline() -> bool:
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model_source(value: str | os.PathLike, field: str = "model.path") -> str:
    """`value` (a folder or a hub name) with `~` expanded, after checking it can load; errors name `field`.

    Fast on every failure: a local path must be a folder with config.json (a .gguf file is pointed to
    `rlkit import-gguf`); a hub name must be in the local Hugging Face cache, or the hub must answer
    (one request with a 10 s timeout, instead of transformers' retries: 49 s before a bare connection
    error); with HF_HUB_OFFLINE=1 a name not in the cache fails at once. Raises FileNotFoundError for a
    missing local path and ValueError otherwise.
    """
    text = os.fspath(value)
    local = Path(text).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file() and not (local / "tokenizer_config.json").is_file():
            raise ValueError(f"{field} = {text!r} is a folder without config.json: not a transformers model folder")
        return str(local)
    if local.is_file():
        hint = (f": import it first with `rlkit import-gguf {text} OUT_FOLDER`, then set {field} = OUT_FOLDER"
                if text.endswith(".gguf") else ": it must be a model folder (with config.json) or a hub name")
        raise ValueError(f"{field} = {text!r} is a file{hint}")
    if _looks_like_local_path(text) or not _HUB_ID.match(text):
        hint = ""
        if local.name == "SmolLM2-135M-Instruct":
            hint = " (prepare the real test model with `rlkit prepare-smollm2` or `make real-model`)"
        kind = "does not exist" if _looks_like_local_path(text) else "is neither an existing folder nor a hub name"
        raise FileNotFoundError(f"{field} = {text!r} {kind} (resolved to {local.resolve()}){hint}")
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        if isinstance(try_to_load_from_cache(text, filename), str):
            return text  # in the local cache: loads offline
    if _hub_offline():
        raise ValueError(f"{field} = {text!r} is not a local folder and not in the Hugging Face cache, and "
                         "HF_HUB_OFFLINE=1 forbids downloading it: give a local folder, or unset HF_HUB_OFFLINE")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(text, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise ValueError(f"{field} = {text!r}: no such model on the Hugging Face hub, or it is private or gated "
                         f"(log in with `huggingface-cli login`): {type(err).__name__}") from err
    except Exception as err:  # connection refused, DNS, timeout, proxy: all mean "cannot download now"
        raise ValueError(f"{field} = {text!r} is not a local folder, not in the Hugging Face cache, and the hub "
                         f"could not be reached ({type(err).__name__}: {str(err)[:160]}): give a local folder, "
                         "or check the network") from err
    return text


def load_model_and_tokenizer(
    path_or_hub_name: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer_path: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder or a hub name (the real loading path).

    - `dtype` is the parameter dtype (fp32 by default: FSDP2 keeps fp32 master
      weights and casts for compute; pass torch.bfloat16 for inference-only roles).
    - `tokenizer_path` defaults to the model path.
    - `attn_implementation` ("eager", "sdpa", ...; None = transformers' default) and
      `trust_remote_code` go to `from_pretrained` (as `rlkit.config.ModelConfig` names them).
    - A tokenizer without a pad token gets pad = eos (Llama-style checkpoints ship
      none); rlkit masks padding explicitly, so the id only has to be valid.
    Raises FileNotFoundError naming the path when a local path does not exist,
    and ValueError when the tokenizer has ids beyond the model's embedding table.
    """
    name = os.fspath(path_or_hub_name)
    tok_name = os.fspath(tokenizer_path) if tokenizer_path is not None else name
    for label, value in (("model", name), ("tokenizer", tok_name)):
        expanded = os.path.expanduser(value)
        if not os.path.exists(expanded) and _looks_like_local_path(value):
            raise FileNotFoundError(f"{label} path {value!r} does not exist (resolved to {os.path.abspath(expanded)})")
        if not os.path.exists(expanded):  # a hub name: cached, or the hub answers (fast, clear errors)
            check_model_source(value, f"{label} path")
    name, tok_name = os.path.expanduser(name), os.path.expanduser(tok_name)

    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_name, trust_remote_code=trust_remote_code)
        model_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only models already in the local cache can load)" if offline else ""
        raise OSError(f"could not load model/tokenizer {name!r}{hint}: {err}") from err

    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {tok_name!r} has neither a pad nor an eos token; rlkit needs one of them")
        tokenizer.pad_token = tokenizer.eos_token

    num_embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > num_embeddings:
        raise ValueError(
            f"tokenizer of {tok_name!r} has {len(tokenizer)} tokens but the model {name!r} embeds only "
            f"{num_embeddings}: ids >= {num_embeddings} would index out of range. Use the tokenizer saved with "
            "the model, or resize the model's embeddings first."
        )
    return model.eval(), tokenizer
