"""`ModelRole`: the one component the four model roles (policy, reference, critic, reward model) hold.

A role class (what a `WorkerGroup` builds on every rank) is a thin shell: it names its
forward function and its output field, and keeps the `@register`-ed methods the group
dispatches. Everything else is the same for every role and lives here, once:

- construction: tokenizer, `ShardedModel`, `Optimizer` (trainable roles), `Residency`, `CallStats`;
- `infer`: the no-grad loop over micro-batches, measured, with the parameters on the device;
- `train`: the update loop (`rlkit.workers.train_step.train_epochs`);
- checkpoint / export / weights / stats.

The state methods every role exposes on its group are module-level functions below,
decorated once with `@register` and bound by each role class as class attributes
(`save_checkpoint = role.save_checkpoint`): the group reads the decorator from the class
attribute, so no base class is needed. They expect `self.core` to be a `ModelRole`
(the `HasCore` protocol).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Protocol

import torch
from transformers import PretrainedConfig

from rlkit.batch import Batch
from rlkit.cluster import register
from rlkit.workers.batching import local_minibatch_size, mean_padded_length, require_fields
from rlkit.workers.checkpoint import load_checkpoint as _load_checkpoint
from rlkit.workers.checkpoint import save_checkpoint as _save_checkpoint
from rlkit.workers.common import CallStats, Residency, load_tokenizer
from rlkit.workers.lora import LoraSpec
from rlkit.workers.optim import Optimizer, OptimConfig
from rlkit.workers.sharded import ShardedModel
from rlkit.workers.train_step import LossFn, split_micro_batches, train_epochs

ModelSource = str | os.PathLike | PretrainedConfig
ForwardFn = Callable[[Batch], dict[str, torch.Tensor]]
"""`forward(mb) -> {name: (b, ...) tensor}` for one micro-batch of b rows (with grad when training)."""

SEQUENCE_FIELDS = ("prompt_ids", "response_ids", "response_mask")
"""The Batch fields every model role reads (prompt + response tokens and the response mask)."""


def as_optim_config(optim: OptimConfig | dict | None) -> OptimConfig:
    """An `OptimConfig` from itself, a dict of its fields, or None (the defaults)."""
    return optim if isinstance(optim, OptimConfig) else OptimConfig(**(optim or {}))


def model_kwargs_from_config(cfg: Any, *, tokenizer: bool = True) -> dict[str, Any]:
    """The `ModelRole` options every role takes from an `rlkit.config.Config` (model / seed / cluster).

    tokenizer: include `model.tokenizer_path` (False for a reward model, which brings its own).
    """
    kwargs = {
        # model.dtype: "bfloat16" = bf16 compute with fp32 master weights (on CPU too), "float32" = none,
        # "auto" = None: bf16 on CUDA, fp32 on CPU (ShardedModel decides)
        "mixed_precision": {"bfloat16": True, "float32": False}.get(cfg.model.dtype),
        "attn_implementation": cfg.model.attn_implementation,
        "seed": cfg.seed,
        "shard_one_rank": cfg.cluster.shard_one_rank,
    }
    if tokenizer:
        kwargs["tokenizer_path"] = cfg.model.tokenizer_path
    return kwargs


class ModelRole:
    """One role's model on this rank: tokenizer, `ShardedModel`, optimizer, residency and call stats.

    Attributes `train_epochs` reads (and `PolicyWorker` re-exposes for `HybridActor`'s engine):
    `name`, `model`, `tokenizer`, `optimizer` (None when frozen), `residency`, `stats`; and the
    constructor's `micro_batch_size`, `mini_batch_size`, `epochs` (defaults of `infer` / `train`).
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        kind: str,
        name: str,
        device: torch.device | str | None,
        trainable: bool,
        optim: OptimConfig | dict | None = None,
        micro_batch_size: int = 4,
        mini_batch_size: int | None = None,
        epochs: int = 1,
        offload: bool = False,
        mixed_precision: bool | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        tokenizer_path: str | os.PathLike | None = None,
        seed: int = 0,
        shard_one_rank: bool = False,
        max_tokens_per_micro_batch: int = 0,
        pack_sequences: bool = False,
        lora: LoraSpec | None = None,
    ):
        """
        source: hub name, local folder or transformers config (random init under `seed`).
        kind: "causal_lm" (logits: policy, reference) or "token_scores" (a scalar per token: critic, reward).
        name: prefix of the stats and metrics (`<name>/<call>/seconds`) and of error messages.
        trainable: build an `Optimizer` from `optim` (ignored when False) and allow `train`.
        micro_batch_size: rows per forward (and backward) on one rank; gradients accumulate in between.
        mini_batch_size: rows per optimizer step over ALL ranks (None: the whole batch, one step per epoch).
        epochs: passes over the batch per `train` call (PPO epochs).
        offload: keep parameters and optimizer state on CPU between calls (GPU hosts).
        mixed_precision: bf16 compute with fp32 master weights; None: on CUDA only.
        tokenizer_path: the tokenizer to check the vocabulary against and export (None: the model folder's).
        shard_one_rank: FSDP2-wrap the model even with one rank (`ShardedModel(shard=True)`).
        max_tokens_per_micro_batch: > 0: micro-batches by token budget instead of `micro_batch_size` rows
            (`rlkit.workers.packing`), for `infer` and `train` alike.
        pack_sequences: run each micro-batch as one packed row without padding, when a check at start-up
            finds this model's attention keeps packed sequences apart (else padded, with a warning).
        lora: train LoRA adapters only (`rlkit.workers.lora.LoraSpec`; the policy).
        """
        self.name = name
        self.tokenizer = load_tokenizer(source, tokenizer_path)
        self.model = ShardedModel(
            source,
            kind=kind,
            device=device,
            trainable=trainable,
            mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing,
            attn_implementation=attn_implementation,
            tokenizer=self.tokenizer,
            seed=seed,
            shard=True if shard_one_rank else None,
            lora=lora,
        )
        self.optimizer = Optimizer(self.model.module, as_optim_config(optim)) if trainable else None
        self.residency = Residency(self.model, self.optimizer, offload)
        self.stats = CallStats(self.model, name)
        self.micro_batch_size, self.mini_batch_size, self.epochs = micro_batch_size, mini_batch_size, epochs
        if max_tokens_per_micro_batch < 0:
            raise ValueError(f"{name}: max_tokens_per_micro_batch = {max_tokens_per_micro_batch} must be >= 0 "
                             "(0: micro_batch_size rows per micro-batch)")
        self.max_tokens = int(max_tokens_per_micro_batch)
        self.packing = False
        """True when forwards run packed (`pack_sequences` asked and `packing_problem` found none)."""
        if pack_sequences:
            problem = packing_problem(self.model)
            if problem:
                warnings.warn(f"{name}: pack_sequences is off for this model ({problem}); micro-batches run "
                              "padded", RuntimeWarning, stacklevel=2)
            self.packing = problem is None

    # ------------------------------------------------------------------ calls

    @torch.no_grad()
    def infer(self, batch: Batch, call: str, forward: ForwardFn) -> dict[str, torch.Tensor]:
        """`forward` over `batch` in micro-batches, without gradients: {name: (B, ...) float32 on CPU}.

        Measured as `<name>/<call>/...` (tokens: valid prompt + response tokens; seq_len: the mean
        padded length of the micro-batches), with the parameters on the device for the call.
        """
        require_fields(batch, SEQUENCE_FIELDS, f"{self.name}.{call}")
        parts: dict[str, list[torch.Tensor]] = {}
        lengths: list[float] = []
        rows: list[int] = []
        with self.residency.on_device(), self.stats.measure(call, backward=False) as info:
            plan = split_micro_batches(batch, self.micro_batch_size, max_tokens=self.max_tokens,
                                       packed=self.packing, device=self.model.device)
            for indices, mb in plan:
                for key, value in forward(mb).items():
                    parts.setdefault(key, []).append(value.float().cpu())
                lengths.append(mean_padded_length(mb))
                rows.extend(indices if indices is not None else [])
            info["tokens"] = batch.num_tokens()
            info["seq_len"] = sum(lengths) / max(1, len(lengths))
        out = {key: torch.cat(values) for key, values in parts.items()}
        if rows:  # token-budget micro-batches took the rows out of order: put them back
            back = torch.empty(len(rows), dtype=torch.long)
            back[torch.tensor(rows)] = torch.arange(len(rows))
            out = {key: value[back] for key, value in out.items()}
        return out

    def train(
        self,
        batch: Batch,
        loss_fn: LossFn,
        forward: ForwardFn,
        *,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        epochs: int | None = None,
        needs: tuple[str, ...] = (),
        check: Callable[[Batch, int, int, str], None] | None = None,
        metric_weight: str = "tokens",
    ) -> dict[str, float]:
        """`epochs` passes of optimizer steps over this rank's rows (see `train_epochs`).

        mini_batch_size, micro_batch_size, epochs: this call's, over the constructor's (None: those).
        needs: Batch fields the loss reads besides the sequence fields (named in the error if absent).
        check: `check(batch, rows per step on this rank, micro_batch_size, where)`, run before any step
            (raises on a layout the loss cannot use, e.g. a preference pair cut in two).
        Returns `<name>/<metric>` averaged over steps plus the call's `<name>/update/...` measurements.
        """
        where = f"{self.name}.update"
        if self.optimizer is None:
            raise RuntimeError(f"{where}: this {self.name} model was built with trainable=False")
        require_fields(batch, SEQUENCE_FIELDS + tuple(needs), where)
        rows = local_minibatch_size(mini_batch_size or self.mini_batch_size, self.model.world_size, len(batch))
        micro = micro_batch_size or self.micro_batch_size
        if check is not None:
            check(batch, rows, micro, where)
        return train_epochs(self, batch, rows=rows, micro_batch_size=micro, epochs=epochs or self.epochs,
                            forward=forward, loss_fn=loss_fn, where=where, metric_weight=metric_weight,
                            max_tokens=self.max_tokens, packed=self.packing)

    # ------------------------------------------------------------------ state

    def save_checkpoint(self, path: str | os.PathLike, extra: dict | None = None) -> str:
        """Sharded model (+ optimizer + scheduler) under `path`; collective (all ranks write)."""
        with self.residency.on_device():
            return str(_save_checkpoint(path, self.model, self.optimizer, extra))

    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Restore what `save_checkpoint` wrote; returns its `extra`."""
        with self.residency.on_device():
            return _load_checkpoint(path, self.model, self.optimizer)

    def save_pretrained(self, path: str | os.PathLike) -> str:
        """A plain Hugging Face folder (model + tokenizer) loadable with `from_pretrained`."""
        with self.residency.on_device():
            return str(self.model.save_pretrained(path, tokenizer=self.tokenizer))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) weights on CPU, gathered on rank 0."""
        with self.residency.on_device():
            return self.model.full_state_dict()


def packing_problem(model: ShardedModel) -> str | None:
    """None when `model` computes two packed sequences as it computes each alone (attention kept apart by
    the position resets, `rlkit.workers.packing`), else what differed. One tiny no-grad forward (collective
    when sharded: every rank calls it at construction)."""
    vocab = int(model.config.get_text_config().vocab_size)
    lengths = (3, 5)
    ids = [torch.arange(1, n + 1) % vocab for n in lengths]
    packed_ids = torch.cat(ids)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    try:
        with torch.no_grad():
            packed = model.forward(packed_ids, None, positions).float().cpu()[0]  # (N, ...)
            alone = [model.forward(x[None], torch.ones(1, len(x), dtype=torch.long), torch.arange(len(x))[None])
                     .float().cpu()[0] for x in ids]
    except Exception as err:  # noqa: BLE001 - an architecture that rejects a mask-less packed row
        return f"a packed forward failed: {type(err).__name__}: {err}"
    gap = float((packed - torch.cat(alone)).abs().max())
    tolerance = 1e-4 if model.compute_dtype == torch.float32 else 5e-2
    if gap > tolerance:
        return (f"its attention mixes packed sequences (outputs differ by {gap:.2g} from the padded ones; "
                f"{type(model.hf_model).__name__} with attn_implementation="
                f"{getattr(model.config, '_attn_implementation', None)!r})")
    return None


# ---------------------------------------------------------------------- methods the role classes bind


class HasCore(Protocol):
    """A role object holding its `ModelRole` as `core`: what the shared methods below need of `self`."""

    core: ModelRole


@register("rank0")
def save_checkpoint(self: HasCore, path: str | os.PathLike, extra: dict | None = None) -> str:
    """Sharded model + optimizer + scheduler under `path` (all ranks write); returns the folder."""
    return self.core.save_checkpoint(path, extra)


@register("rank0")
def load_checkpoint(self: HasCore, path: str | os.PathLike) -> dict:
    """Restore what `save_checkpoint` wrote; returns its `extra`."""
    return self.core.load_checkpoint(path)


@register("rank0")
def save_pretrained(self: HasCore, path: str | os.PathLike) -> str:
    """Export a plain Hugging Face folder (model + tokenizer) loadable with `from_pretrained`:
    a causal LM for the policy and reference, a sequence-classification model (num_labels=1)
    for the critic and the reward model."""
    return self.core.save_pretrained(path)


@register("rank0")
def full_state_dict(self: HasCore) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU, gathered on rank 0 (tests, small models, weight sync)."""
    return self.core.full_state_dict()


@register("broadcast")
def pop_stats(self: HasCore) -> list[dict[str, float]]:
    """This rank's per-call measurements since the last call."""
    return self.core.stats.pop()


__all__ = [
    "ModelRole",
    "HasCore",
    "ForwardFn",
    "SEQUENCE_FIELDS",
    "as_optim_config",
    "model_kwargs_from_config",
    "save_checkpoint",
    "load_checkpoint",
    "save_pretrained",
    "full_state_dict",
    "pop_stats",
]
