"""`ShardedModel`: the one FSDP2-sharded transformers model every worker role is built from.

Roles compose it (a policy *has* a sharded model and an optimizer; it is not a
subclass of one). It works in any process where `torch.distributed` is
initialised (a Ray actor, a `torchrun` process, the local backend's world of
one) and never imports Ray.

What it does:
- builds the model from a hub name, a local folder or a transformers config
  (`AutoModelForCausalLM` for policies, `AutoModelForSequenceClassification` with
  one label for critics and reward models) with the same seed on every rank;
- `fully_shard`s every decoder layer, then the root; bf16 compute with fp32
  gradient reduction on CUDA (and on CPU when asked: `mixed_precision=True`,
  `model.dtype = "bfloat16"`), plain fp32 otherwise. With one rank in fp32 (a CPU
  worker, or one GPU without mixed precision) the model stays a plain module
  unless `shard=True`: FSDP2 over one rank gathers nothing, yet it copies every
  layer's parameters at every forward and routes every parameter op through
  DTensor dispatch (15% of the 1M reference step, see BENCHMARKS.md);
- runs the forward pass of a `Batch` (prompt + response) and returns what the
  roles need: logits for the response tokens, or one scalar per token, or
  (`token_logprobs`) the response log-probs and entropy computed from the final
  hidden states a chunk of tokens at a time, never holding (b, T, V) logits;
- moves its parameters to CPU and back between stages (`offload` / `onload`);
- gathers a full state dict and exports a Hugging Face folder.

The generation side (unsharding in place for a rollout engine) lives in
`rlkit.rollout`; it uses `module` and `fsdp_modules` from here.
"""

from __future__ import annotations

import contextlib
import os
import types
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from rlkit.algos.chunked_logits import chunked_logprobs_entropy
from rlkit.workers.lora import LoraSpec, apply_lora, merge_lora_weights

ModelKind = Literal["causal_lm", "token_scores"]
KINDS = ("causal_lm", "token_scores")


class TokenScoreModel(nn.Module):
    """A scalar per token: the backbone of a sequence-classification model and its 1-output head.

    transformers' own `ForSequenceClassification.forward` pools at the last non-pad
    token by comparing ids with `pad_token_id`, which misplaces the score when pad
    equals EOS; critics need every position anyway. So this runs the backbone and the
    head on all positions and the caller picks positions. Sharded as the FSDP root,
    so the embedding, final norm and head are gathered by the root's forward hook.
    """

    def __init__(self, hf_model: PreTrainedModel):
        super().__init__()
        self.hf = hf_model
        self.head_name = "score" if hasattr(hf_model, "score") else "classifier"
        if not isinstance(getattr(hf_model, self.head_name, None), nn.Linear):
            raise TypeError(
                f"{type(hf_model).__name__} has no linear `score`/`classifier` head; "
                "token scores need a decoder-style sequence-classification model"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        backbone = getattr(self.hf, self.hf.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (b, L, H)
        # (b, L, 1): squeezed by the caller, outside FSDP's hooks (a view returned
        # from an FSDP module would bypass its pre-backward hook if edited in place)
        return getattr(self.hf, self.head_name)(hidden)


class ShardedModel:
    """One FSDP2-sharded transformers model on this rank.

    Attributes other components rely on:
    `module` (the FSDP root, an `nn.Module` and `FSDPModule`; a plain `nn.Module` when
    `sharded` is False), `hf_model` (the transformers model inside it: `module` itself for
    causal LMs), `fsdp_modules` (every FSDP-wrapped submodule, decoder layers first, root
    last; empty when not sharded), `sharded`, `device`, `config` (the transformers
    config), `compute_dtype`, `chunked_head_unsupported` (None, or why `token_logprobs` cannot be used).
    """

    def __init__(
        self,
        source: str | os.PathLike | PretrainedConfig,
        *,
        kind: ModelKind = "causal_lm",
        device: torch.device | str | None = None,
        trainable: bool = True,
        mixed_precision: bool | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        tokenizer: Any = None,
        seed: int = 0,
        shard: bool | None = None,
        lora: LoraSpec | None = None,
    ):
        """
        source: hub name ("Qwen/Qwen2.5-0.5B"), local folder, or a `PretrainedConfig` (random init).
        kind: "causal_lm" (logits) or "token_scores" (a scalar per token: critic, reward model).
        device: defaults to `cuda:<LOCAL_RANK>` when CUDA is available, else CPU.
        trainable: False freezes the parameters (reference and reward models).
        mixed_precision: bf16 compute with fp32 master weights and fp32 gradient reduction (FSDP2's
            MixedPrecisionPolicy, so the model is FSDP-wrapped even on one rank); None means "on CUDA
            only". True works on CPU too (`model.dtype = "bfloat16"`; speed and log-prob gap on an
            AVX512-BF16 CPU in BENCHMARKS.md, "Memory per role and bf16 on the real model").
        tokenizer: when given, checked against the model's vocabulary.
        seed: seeds every randomly initialised weight identically on every rank.
        shard: wrap in FSDP2. None = when there is more than one rank or mixed precision is on
            (FSDP2's MixedPrecisionPolicy does the bf16 casting); False with several ranks is an error.
        lora: train LoRA adapters only (`rlkit.workers.lora`; a trainable causal LM): `module` is then the
            PEFT model, `adapters_disabled()` gives the base model, `full_state_dict` the merged weights.
        """
        if kind not in KINDS:
            raise ValueError(f"ShardedModel(kind={kind!r}): allowed {', '.join(KINDS)}")
        if not dist.is_initialized():
            raise RuntimeError(
                "ShardedModel needs torch.distributed initialised (the worker group does it; "
                "in a plain script use torch.distributed.init_process_group first)"
            )
        self.kind = kind
        self.trainable = trainable
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = _default_device() if device is None else torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        use_mp = self.device.type == "cuda" if mixed_precision is None else bool(mixed_precision)
        if shard is None:
            shard = self.world_size > 1 or use_mp
        if not shard and (self.world_size > 1 or use_mp):
            raise ValueError(f"ShardedModel(shard=False) with world_size={self.world_size}, mixed precision "
                             f"{'on' if use_mp else 'off'}: several ranks and bf16 compute need FSDP2")
        self.sharded = shard
        self.compute_dtype = torch.bfloat16 if use_mp else torch.float32
        self.source = source if isinstance(source, PretrainedConfig) else os.fspath(source)

        hf_model = load_hf_model(source, kind, attn_implementation=attn_implementation, seed=seed)
        if tokenizer is not None:
            check_tokenizer(tokenizer, hf_model, where=str(self.source if isinstance(self.source, str) else "config"))
        disable_dropout(hf_model)
        if gradient_checkpointing and trainable:
            enable_activation_checkpointing(hf_model)
        hf_model.config.use_cache = False
        if not trainable:
            hf_model.requires_grad_(False)
        self.hf_model = hf_model
        self.config: PretrainedConfig = hf_model.config
        self.lora = lora
        """The LoRA adapters trained on this model (`LoraSpec`), or None (full fine-tuning)."""
        root = hf_model if kind == "causal_lm" else TokenScoreModel(hf_model)
        self.chunked_head_unsupported = chunked_head_unsupported(hf_model) if kind == "causal_lm" else "not a causal LM"
        if lora is not None:
            if kind != "causal_lm" or not trainable:
                raise ValueError(f"ShardedModel(lora=...): LoRA adapters are for a trainable causal LM (the policy), "
                                 f"not kind={kind!r} trainable={trainable}")
            with torch.random.fork_rng(devices=[]):  # A's random init: the same on every rank and every run
                torch.manual_seed(seed)
                root = apply_lora(hf_model, lora)  # freezes the base weights; hf_model's layers hold the adapters
            self.chunked_head_unsupported = "LoRA adapters (the chunked head reads the plain model's final norm)"
        if self.chunked_head_unsupported is None:
            # an instance method of the root, so FSDP2 can run its pre/post-forward hooks around it (below)
            root.rlkit_token_logprobs = types.MethodType(_root_token_logprobs, root)

        # Count before sharding: afterwards a parameter's numel is its full size but
        # the embedding table must be left out of the FLOP count (a lookup, not a matmul).
        self.num_params = sum(p.numel() for p in hf_model.parameters())
        embedding = hf_model.get_input_embeddings()
        tied = getattr(self.config, "tie_word_embeddings", False) and kind == "causal_lm"
        self.num_matmul_params = self.num_params - (0 if tied else embedding.weight.numel())

        self.module: nn.Module = root
        self.fsdp_modules: list[FSDPModule] = []  # empty for a plain (unsharded) module
        if shard:
            mesh = init_device_mesh(self.device.type, (self.world_size,))
            mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if use_mp
                  else MixedPrecisionPolicy())
            layers = decoder_layers(hf_model)
            for layer in layers:
                fully_shard(layer, mesh=mesh, mp_policy=mp)
            fully_shard(root, mesh=mesh, mp_policy=mp)
            self.fsdp_modules = [*layers, root]
            if self.chunked_head_unsupported is None:
                # The root's pre-forward hook gathers the root's own parameters (embedding, final norm, LM
                # head) and sets up the backward (reduce-scatter of their gradients); it runs only around
                # forward() unless the method is registered. Calling `module.model` directly would skip it.
                register_fsdp_forward_method(root, "rlkit_token_logprobs")
        else:
            root.to(self.device)
        self.module.train(trainable)  # dropout is off either way; train mode enables checkpointing
        self._offloaded = False

    # ------------------------------------------------------------------ shape facts

    @property
    def num_layers(self) -> int:
        return int(self.config.get_text_config().num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.get_text_config().hidden_size)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        *,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        """Causal LM: logits (b, L, V) (only the last `logits_to_keep` positions when an int > 0, or the
        positions a 1-D index tensor names: (b, K, V)). Token scores: (b, L) float32. Inputs are moved to
        this model's device. `attention_mask` None with position ids restarting at 0 is a packed row
        (`rlkit.workers.packing`): transformers masks attention across the sequences in it."""
        if self._offloaded:
            raise RuntimeError("ShardedModel.forward while offloaded to CPU: call onload() first")
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device) if attention_mask is not None else None
        position_ids = position_ids.to(self.device)
        if isinstance(logits_to_keep, torch.Tensor):
            logits_to_keep = logits_to_keep.to(self.device)
        if self.kind == "causal_lm":
            out = self.module(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=logits_to_keep,
            )
            return out.logits
        return self.module(input_ids, attention_mask, position_ids)[..., 0].float()  # (b, L)

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        *,
        temperature: float = 1.0,
        chunk_size: int,
        with_entropy: bool = True,
        predict_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Causal LM: log-probs of `targets` (b, T), the last T tokens of `input_ids` (b, L), and the
        entropy at those positions, float32, from the final hidden states `chunk_size` tokens at a time.
        `predict_index` (b, T): the columns of a packed `input_ids` (1, N) that predict `targets` instead
        (`rlkit.workers.packing`; `attention_mask` None).

        Equals `log_softmax(forward(..., logits_to_keep=T + 1)[:, :-1] / temperature)` at `targets` (and
        its entropy), without ever holding the (b, T, V) logits: see `rlkit.algos.chunked_logits`. Runs
        inside the FSDP2 root's forward hooks, so it is correct sharded or not, with or without grad.
        Returns (logprobs (b, T), entropy (b, T) or None when `with_entropy` is False).
        """
        if self._offloaded:
            raise RuntimeError("ShardedModel.token_logprobs while offloaded to CPU: call onload() first")
        if self.chunked_head_unsupported is not None:
            raise ValueError(f"ShardedModel.token_logprobs: {self.chunked_head_unsupported}; use forward() "
                             "and logprobs_from_logits (actor.logits_chunk_size = 0)")
        if predict_index is None and (targets.dim() != 2 or targets.shape[0] != input_ids.shape[0]
                                      or targets.shape[1] >= input_ids.shape[1]):
            raise ValueError(f"ShardedModel.token_logprobs: targets {tuple(targets.shape)} must be (b, T) with "
                             f"T < L for input_ids {tuple(input_ids.shape)} (the last T tokens)")
        device = self.device
        return self.module.rlkit_token_logprobs(
            input_ids.to(device), attention_mask.to(device) if attention_mask is not None else None,
            position_ids.to(device), targets.to(device), temperature, chunk_size, with_entropy,
            predict_index.to(device) if predict_index is not None else None,
        )

    # ------------------------------------------------------------------ offload

    def offload(self) -> None:
        """Move this rank's parameter shards (and gradients) to CPU; no-op on CPU devices."""
        if self.device.type != "cpu" and not self._offloaded:
            self.module.to("cpu")
            torch.cuda.empty_cache()
        self._offloaded = self.device.type != "cpu"

    def onload(self) -> None:
        """Bring the parameter shards back to the device after `offload`."""
        if self._offloaded:
            self.module.to(self.device)
            self._offloaded = False

    # ------------------------------------------------------------------ export

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Gather the full (unsharded) state dict on CPU. Collective: call on every rank.

        Rank 0 gets every tensor; the other ranks get `{}`. Keys are the transformers
        model's own (a `TokenScoreModel` wrapper's prefix is removed).
        """
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.module, options=options)
        if not self.sharded and self.device.type == "cpu":
            # a plain CPU module's state dict holds the live parameters: snapshot them, as a gather would,
            # so a later optimizer step does not change what the caller holds
            state = {key: value.detach().clone() for key, value in state.items()}
        if self.kind == "token_scores":
            state = {key.removeprefix("hf."): value for key, value in state.items()}
        if self.lora is not None and state:  # the policy as a plain model: W + s B A under the base names
            state = dict(merge_lora_weights(state.items(), self.lora.scaling))
        return state

    def adapters_disabled(self):
        """A context in which the model computes without its LoRA adapters (the base model: the reference
        policy of a LoRA run); a no-op without LoRA."""
        return self.module.disable_adapter() if self.lora is not None else contextlib.nullcontext()

    def save_pretrained(self, path: str | os.PathLike, tokenizer: Any = None) -> Path:
        """Write a plain Hugging Face folder (config, safetensors, tokenizer) that
        `AutoModelFor*.from_pretrained(path)` loads. Collective: call on every rank."""
        path = Path(path)
        state = self.full_state_dict()
        if self.rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            export = _fresh_copy(self.hf_model)
            export.load_state_dict(state, strict=True, assign=True)
            if getattr(export.config, "tie_word_embeddings", False):
                export.tie_weights()
            export.config.use_cache = True  # a loaded model should generate with a KV cache
            export.save_pretrained(path)
            if tokenizer is not None:
                tokenizer.save_pretrained(path)
        dist.barrier()
        return path


# ---------------------------------------------------------------------- building blocks


_UNCHUNKABLE_HEAD_FIELDS = ("final_logit_softcapping", "logit_softcapping", "logits_soft_cap", "logit_scale",
                            "logits_scaling")
"""Config fields of models whose forward changes the logits after the LM head (Gemma's soft-capping,
Cohere's and Granite's scaling): the chunked head, which computes `hidden @ W^T` itself, would miss that."""


def chunked_head_unsupported(hf_model: PreTrainedModel) -> str | None:
    """None when `token_logprobs` computes exactly the model's logits, else the reason it cannot.

    It needs the base model under `base_model_prefix` (its `last_hidden_state` is what the LM head sees),
    a linear output embedding, and no post-head transform of the logits in the model's forward.
    """
    name = type(hf_model).__name__
    if not isinstance(getattr(hf_model, hf_model.base_model_prefix, None), nn.Module):
        return f"{name} has no base model at `{hf_model.base_model_prefix}`"
    if not isinstance(hf_model.get_output_embeddings(), nn.Linear):
        return f"{name}'s output embedding is not an nn.Linear"
    text = hf_model.config.get_text_config()
    for field in _UNCHUNKABLE_HEAD_FIELDS:
        value = getattr(text, field, None)
        if value not in (None, 1, 1.0):
            return f"{name} transforms its logits after the LM head (config.{field} = {value})"
    if getattr(hf_model, "final_logits_bias", None) is not None:
        return f"{name} adds final_logits_bias to its logits"
    return None


def _root_token_logprobs(
    self: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
    predict_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bound to the causal-LM root as `rlkit_token_logprobs` (and registered with FSDP2 as a forward):
    the base model's final hidden states at the positions predicting `targets` (b, T), then the chunked head.
    `predict_index` (b, T): those positions in a packed row (1, N) instead of the last T + 1 of each row.

    The outputs are fresh tensors (not views): FSDP2 hooks its pre-backward onto them.
    """
    base = getattr(self, self.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state  # (b, L, H), after the final norm
    t = targets.shape[1]
    if predict_index is not None:
        hidden = hidden[0][predict_index]  # (1, N, H) -> (b, T, H): a packed row's predicting positions
    else:
        # position i predicts token i + 1: the T positions before the last predict the last T tokens
        hidden = hidden[:, -t - 1:-1]  # (b, T, H)
    head = self.get_output_embeddings()  # inside the root's forward: its unsharded (compute-dtype) weight
    return chunked_logprobs_entropy(hidden, head.weight, targets, bias=head.bias, temperature=temperature,
                                    chunk_size=chunk_size, with_entropy=with_entropy)


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; a path that is absolute, dotted, home-based or
    # has more than one slash can only mean a local folder.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def load_hf_model(
    source: str | os.PathLike | PretrainedConfig,
    kind: ModelKind,
    *,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """Build the fp32 transformers model (on CPU) for `kind` from a name, a folder or a config.

    Weights that the source lacks (a fresh score head on a causal-LM checkpoint, or
    everything for a config) are drawn under `seed`, identically on every rank.
    """
    auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
    extra: dict[str, Any] = {}
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(source, PretrainedConfig):
            config = source.__class__.from_dict(source.to_dict())  # a copy: never mutate the caller's
            if kind == "token_scores":
                config.num_labels = 1
            return auto.from_config(config, dtype=torch.float32, **extra)
        name = os.fspath(source)
        expanded = os.path.expanduser(name)
        if not os.path.exists(expanded) and _looks_local(name):
            raise FileNotFoundError(
                f"model path {name!r} does not exist (resolved to {os.path.abspath(expanded)}); "
                "give an existing folder with config.json, or a hub name like 'Qwen/Qwen2.5-0.5B'"
            )
        if os.path.isdir(expanded) and not os.path.isfile(os.path.join(expanded, "config.json")):
            raise FileNotFoundError(
                f"model folder {name!r} has no config.json: not a Hugging Face model folder "
                "(export one with ShardedModel.save_pretrained or save_pretrained)"
            )
        if kind == "token_scores":
            extra["num_labels"] = 1
        try:
            return auto.from_pretrained(expanded, dtype=torch.float32, **extra)
        except OSError as err:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1: only models already in the local cache load)" if offline else ""
            raise OSError(f"could not load model {name!r}{hint}: {err}") from err


def check_tokenizer(tokenizer: Any, hf_model: PreTrainedModel, where: str) -> None:
    """Raise if the tokenizer can produce ids the model has no embedding for."""
    vocab = len(tokenizer)
    rows = hf_model.get_input_embeddings().num_embeddings
    if vocab > rows:
        raise ValueError(
            f"tokenizer has {vocab} tokens but model {where!r} embeds only {rows}: ids >= {rows} would "
            "index out of range. Use the tokenizer saved with the model (model.tokenizer_path), "
            "or resize the model's embeddings."
        )


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0: RL ratios and SFT/RM equivalence tests need a deterministic forward.

    Attention modules copy `config.attention_dropout` into an attribute at construction,
    so the modules are patched, not the config (an exported folder keeps its config).
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant: works with FSDP2 hooks)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model: PreTrainedModel) -> list[nn.Module]:
    """The repeated transformer blocks to shard one by one (`_no_split_modules` names them).

    Falls back to the children of the longest `nn.ModuleList` for models that do not declare them.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if found:
        return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: found no decoder layers to shard")
    return list(max(lists, key=len))


def _fresh_copy(hf_model: PreTrainedModel) -> PreTrainedModel:
    """An unsharded model of the same class and config, on the meta device (filled with `assign=True`)."""
    with torch.device("meta"):
        return type(hf_model)._from_config(hf_model.config, dtype=torch.float32)


__all__ = [
    "ShardedModel",
    "TokenScoreModel",
    "load_hf_model",
    "check_tokenizer",
    "chunked_head_unsupported",
    "disable_dropout",
    "decoder_layers",
    "KINDS",
]
