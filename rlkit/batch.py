"""`Batch`: the one typed container of an RL batch.

Every stage of the dataflow (generate -> prepare -> learn) reads and writes the
same `Batch`: per-sample tensors plus per-row strings, one row per sampled
response. It is a `tensordict` tensorclass, so `batch[idx]`, `batch.to(device)`
and `torch.cat` work on all fields at once, and the string fields (stored by
tensordict as a `NonTensorStack`, one entry per row) are sliced with their rows.

Layout conventions (the rest of rlkit relies on them):
- prompts are LEFT-padded to a common length P, so the last prompt token of
  every row sits at column P-1 and generation continues from there;
- responses are RIGHT-padded to a common length T; `response_mask` is 1 on real
  response tokens (EOS included) and 0 on padding. Every (B, T) field is
  aligned with `response_ids`: column t holds the quantity for response token t.

The methods used by the controller to move a batch over data-parallel ranks:
`pad_to_multiple` / `split` / `unpad` / `concat` (padding rows are copies of the
last row with `response_mask` zeroed, so they carry no loss weight).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from tensordict import tensorclass

# On-disk format written by `Batch.save`; bump when the payload layout changes.
FORMAT_NAME = "rlkit.Batch"
FORMAT_VERSION = 1

# Field groups. They decide how a field is padded when batches with different
# prompt/response lengths are concatenated, and which shape it must have.
PROMPT_FIELDS = ("prompt_ids", "prompt_mask")  # (B, P), left-padded
RESPONSE_FIELDS = (  # (B, T), right-padded, aligned with response_ids
    "response_ids",
    "response_mask",
    "rollout_logprobs",
    "old_logprobs",
    "ref_logprobs",
    "values",
    "token_rewards",
    "advantages",
    "returns",
    "token_policy_version",
    "loss_mask",
    "turn_rewards",
)
ROW_FIELDS = ("scores", "costs", "baseline_scores", "group_id", "policy_version")  # (B,)
TEXT_FIELDS = ("prompt_text", "response_text", "ground_truth", "data_source", "extra_info")  # list of B entries
# The per-prompt lists a rollout engine copies from a prompt row to each of its n samples.
PROMPT_TEXT_FIELDS = ("prompt_text", "ground_truth", "data_source", "extra_info")
TENSOR_FIELDS = PROMPT_FIELDS + RESPONSE_FIELDS + ROW_FIELDS
ALL_FIELDS = TENSOR_FIELDS + TEXT_FIELDS
_INTEGER_FIELDS = ("prompt_ids", "response_ids", "group_id", "policy_version", "token_policy_version", "loss_mask")


# `shadow=True`: the field name `values` is also a TensorDict method name; the
# interface fixes the name, and rlkit never calls `Batch.values()` as a method.
@tensorclass(shadow=True)
class Batch:
    """One RL batch: B rows, one per sampled response. Every field is optional (None when absent)."""

    # --- prompt side: (B, P), left-padded ---
    prompt_ids: Optional[torch.Tensor] = None  # (B, P) long: prompt token ids, left-padded
    prompt_mask: Optional[torch.Tensor] = None  # (B, P): 1 on real prompt tokens, 0 on left padding

    # --- response side: (B, T), right-padded, column t = response token t ---
    response_ids: Optional[torch.Tensor] = None  # (B, T) long: sampled response token ids, right-padded
    response_mask: Optional[torch.Tensor] = None  # (B, T): 1 on real response tokens incl. EOS, 0 on padding
    rollout_logprobs: Optional[torch.Tensor] = None  # (B, T) float: log pi(token) from the rollout engine
    old_logprobs: Optional[torch.Tensor] = None  # (B, T) float: log pi_old(token), recomputed by the actor before the update
    ref_logprobs: Optional[torch.Tensor] = None  # (B, T) float: log pi_ref(token) from the frozen reference model
    values: Optional[torch.Tensor] = None  # (B, T) float: critic value V(s_t) before response token t
    token_rewards: Optional[torch.Tensor] = None  # (B, T) float: per-token reward (score at the last token, minus KL penalty)
    advantages: Optional[torch.Tensor] = None  # (B, T) float: advantage estimate per response token
    returns: Optional[torch.Tensor] = None  # (B, T) float: return targets for the critic
    token_policy_version: Optional[torch.Tensor] = None  # (B, T) long: version that drew each token (partial rollouts)
    # Multi-turn rollouts (rlkit.envs): the response is the whole trajectory after the first prompt, the policy's
    # turns and the environment's (tool results, feedback) interleaved. `response_mask` still marks every real
    # token (the models attend to all of them); `loss_mask` marks the policy's own sampled tokens, the only
    # ones trained on (`policy_mask()`: loss_mask when set, else response_mask).
    loss_mask: Optional[torch.Tensor] = None  # (B, T) long: 1 on tokens the policy sampled, 0 on environment tokens and padding
    turn_rewards: Optional[torch.Tensor] = None  # (B, T) float: each environment step's reward on the last token of the policy turn it answered

    # --- per row: (B,) ---
    scores: Optional[torch.Tensor] = None  # (B,) float: sequence-level reward (reward fn or reward model)
    costs: Optional[torch.Tensor] = None  # (B,) float: sequence-level cost (Safe-RLHF cost model)
    baseline_scores: Optional[torch.Tensor] = None  # (B,) float: score of the prompt's greedy response (ReMax baseline)
    group_id: Optional[torch.Tensor] = None  # (B,) long: index of the prompt a row was sampled from (GRPO/RLOO groups)
    policy_version: Optional[torch.Tensor] = None  # (B,) long: trainer updates in the weights that sampled the row

    # --- per-row non-tensor data: lists of B entries, sliced with their rows ---
    prompt_text: Optional[list] = None  # B str: the prompt as text (after the chat template)
    response_text: Optional[list] = None  # B str: the decoded response
    ground_truth: Optional[list] = None  # B entries: the reference answer the reward function checks against
    data_source: Optional[list] = None  # B str: the dataset a row came from (verl's `data_source`; default data.source)
    extra_info: Optional[list] = None  # B dict: the row's free-form metadata (verl's `extra_info`; default {})

    # ------------------------------------------------------------------ build

    @classmethod
    def from_prompts(
        cls,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        prompt_text: Optional[Sequence[str]] = None,
        ground_truth: Optional[Sequence[Any]] = None,
        data_source: Optional[Sequence[str]] = None,
        extra_info: Optional[Sequence[dict]] = None,
    ) -> "Batch":
        """A batch of B prompts: `prompt_ids`/`prompt_mask` (B, P) left-padded, optional per-row lists."""
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.ndim != 2:
            raise ValueError(
                f"Batch.from_prompts: prompt_ids must be a (B, P) tensor, got "
                f"{_describe(prompt_ids)}"
            )
        if not isinstance(prompt_mask, torch.Tensor) or prompt_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"Batch.from_prompts: prompt_mask must have the shape of prompt_ids "
                f"{tuple(prompt_ids.shape)}, got {_describe(prompt_mask)}"
            )
        size = prompt_ids.shape[0]
        lists = {"prompt_text": prompt_text, "ground_truth": ground_truth, "data_source": data_source,
                 "extra_info": extra_info}
        for name, values in lists.items():
            if values is not None and len(values) != size:
                raise ValueError(
                    f"Batch.from_prompts: {name} has {len(values)} entries but prompt_ids "
                    f"has {size} rows"
                )
        batch = cls(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            **{name: None if values is None else list(values) for name, values in lists.items()},
            batch_size=[size],
        )
        batch.validate()
        return batch

    # --------------------------------------------------------------- inspect

    def present_fields(self) -> list[str]:
        """Names of the fields that are set (not None), in declaration order."""
        return [name for name in ALL_FIELDS if getattr(self, name) is not None]

    def validate(self) -> "Batch":
        """Check every field's shape and dtype against the layout; return self. Errors name the field."""
        size = len(self)
        lengths: dict[str, tuple[str, int]] = {}  # group -> (first field seen, its length)
        for name in TENSOR_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Batch.{name} must be a tensor, got {type(value).__name__}")
            want_ndim = 1 if name in ROW_FIELDS else 2
            if value.ndim != want_ndim or value.shape[0] != size:
                want = "(B,)" if want_ndim == 1 else "(B, P)" if name in PROMPT_FIELDS else "(B, T)"
                raise ValueError(
                    f"Batch.{name} must have shape {want} with B={size}, got {tuple(value.shape)}"
                )
            if name in _INTEGER_FIELDS and (value.is_floating_point() or value.is_complex()):
                raise TypeError(f"Batch.{name} must hold integers, got dtype {value.dtype}")
            if name == "group_id" and value.dtype != torch.long:
                raise TypeError(f"Batch.group_id must be torch.long, got dtype {value.dtype}")
            if want_ndim == 2:
                group = "prompt" if name in PROMPT_FIELDS else "response"
                first, length = lengths.setdefault(group, (name, value.shape[1]))
                if value.shape[1] != length:
                    raise ValueError(
                        f"Batch.{name} has {group} length {value.shape[1]} but Batch.{first} "
                        f"has {length}: all {group} fields share one padded length"
                    )
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and len(value) != size:
                raise ValueError(f"Batch.{name} has {len(value)} entries for B={size} rows")
        return self

    def policy_mask(self) -> torch.Tensor:
        """(B, T): 1 on the response tokens the policy is trained on: `loss_mask` in a multi-turn batch
        (environment tokens are context, not actions), else `response_mask`."""
        return self.loss_mask if self.loss_mask is not None else self.response_mask

    def num_tokens(self) -> int:
        """Valid (unmasked) prompt tokens + valid response tokens over the whole batch."""
        total = 0
        for ids, mask in (("prompt_ids", "prompt_mask"), ("response_ids", "response_mask")):
            if getattr(self, mask) is not None:
                total += int(getattr(self, mask).sum().item())
            elif getattr(self, ids) is not None:  # no mask: every position is a real token
                total += getattr(self, ids).numel()
        return total

    def __repr__(self) -> str:
        parts = [f"B={len(self)}"]
        for name in self.present_fields():
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                dtype = str(value.dtype).removeprefix("torch.")
                parts.append(f"{name}: {tuple(value.shape)} {dtype}")
            else:
                parts.append(f"{name}: [{len(value)}]")
        return "Batch(" + ", ".join(parts) + ")"

    __str__ = __repr__

    def _repr_html_(self) -> str:
        """Jupyter display: a table of the first rows (prompt, response, score, advantage, length)."""
        from rlkit.monitor.batch_view import batch_table_html  # lazy: only notebooks pay for it

        return batch_table_html(self)

    # ------------------------------------------------------------- transform

    def replace(self, **fields: Any) -> "Batch":
        """A shallow copy with the given fields set (tensors are shared, not copied)."""
        unknown = sorted(set(fields) - set(ALL_FIELDS))
        if unknown:
            raise ValueError(
                f"Batch.replace: unknown field(s) {unknown}; Batch fields are {list(ALL_FIELDS)}"
            )
        out = self.copy()
        for name, value in fields.items():
            setattr(out, name, list(value) if name in TEXT_FIELDS and value is not None else value)
        return out

    def select(self, indices: Sequence[int] | torch.Tensor) -> "Batch":
        """Rows `indices`, in that order (repeats allowed), strings included. Tensors are copies.

        `indices`: a sequence of ints, a 1-D long tensor, or a (B,) bool mask.
        """
        size = len(self)
        index = torch.as_tensor(indices).reshape(-1)
        if index.numel() == 0:  # torch.as_tensor([]) is float32
            index = index.long()
        if index.dtype == torch.bool:
            if index.numel() != size:
                raise IndexError(
                    f"Batch.select: a bool mask needs {size} entries, got {index.numel()}"
                )
            index = index.nonzero().reshape(-1)
        elif index.is_floating_point() or index.is_complex():
            raise TypeError(f"Batch.select: indices must be integers, got dtype {index.dtype}")
        index = index.long()
        if index.numel() and (index.min() < -size or index.max() >= size):
            raise IndexError(
                f"Batch.select: index out of range for a batch of {size} rows: "
                f"{index.tolist()}"
            )
        # Advanced indexing copies, so the result never pins the parent's storage.
        return self[index]

    def pad_to_multiple(self, n: int) -> tuple["Batch", int]:
        """Append copies of the last row until len is a multiple of `n`; their response_mask is 0.

        Returns (padded batch, number of appended rows). Undo with `unpad`.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"Batch.pad_to_multiple: n must be a positive int, got {n!r}")
        size = len(self)
        pad = (-size) % n
        if pad == 0:
            return self, 0
        index = torch.cat([torch.arange(size), torch.full((pad,), size - 1)])
        out = self[index]  # a copy: editing its mask leaves self untouched
        if out.response_mask is not None:
            # Padding rows must carry no loss weight: losses sum over response_mask (loss_mask when multi-turn).
            out.response_mask[size:] = 0
        if out.loss_mask is not None:
            out.loss_mask[size:] = 0
        return out, pad

    def unpad(self, pad: int) -> "Batch":
        """Drop the last `pad` rows (the ones `pad_to_multiple` appended)."""
        if not isinstance(pad, int) or not 0 <= pad <= len(self):
            raise ValueError(
                f"Batch.unpad: pad must be an int in [0, {len(self)}], got {pad!r}"
            )
        return self if pad == 0 else self[: len(self) - pad]

    def split(self, n: int) -> tuple[list["Batch"], int]:
        """Pad to a multiple of `n`, cut into `n` equal contiguous parts; return (parts, pad).

        `Batch.concat(parts).unpad(pad)` gives back this batch. Each part owns its
        memory (no view of the whole), so sending a part to a worker ships 1/n of the data.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"Batch.split: n must be a positive int, got {n!r}")
        padded, pad = self.pad_to_multiple(n)
        size = len(padded) // n
        parts = [padded.select(torch.arange(i * size, (i + 1) * size)) for i in range(n)]
        return parts, pad

    @staticmethod
    def concat(batches: Sequence["Batch"]) -> "Batch":
        """Rows of all `batches`, in order.

        Parts with different prompt lengths P are left-padded (prompt fields) and
        parts with different response lengths T right-padded (response fields)
        to the longest, with zeros: padding is masked out by prompt_mask/response_mask.
        A field must be set in all parts or in none.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("Batch.concat: got an empty list, need at least one Batch")
        for i, part in enumerate(batches):
            if not isinstance(part, Batch):
                raise TypeError(f"Batch.concat: part {i} is a {type(part).__name__}, not a Batch")
        for name in ALL_FIELDS:
            present = [i for i, part in enumerate(batches) if getattr(part, name) is not None]
            if present and len(present) != len(batches):
                missing = [i for i in range(len(batches)) if i not in present]
                raise ValueError(
                    f"Batch.concat: field {name!r} is set in parts {present} but None in parts "
                    f"{missing}; set it in every part or in none"
                )
        for part in batches:
            part.validate()
        batches = _pad_lengths(batches, PROMPT_FIELDS, left=True)
        batches = _pad_lengths(batches, RESPONSE_FIELDS, left=False)
        if len(batches) == 1:
            return batches[0].copy()
        return torch.cat(batches, dim=0)

    # ---------------------------------------------------------------- save

    def save(self, path: str | os.PathLike) -> Path:
        """Write this batch to one file (a torch.save of plain tensors and lists). Returns the path."""
        path = Path(path)
        texts = {}
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                value = list(value)
                for row, item in enumerate(value):
                    _check_plain(item, f"Batch.save: {name}[{row}]")
                texts[name] = value
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "batch_size": len(self),
            # clone: saving a view would write its parent's whole storage
            "tensors": {
                name: getattr(self, name).detach().cpu().clone()
                for name in TENSOR_FIELDS
                if getattr(self, name) is not None
            },
            "texts": texts,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves half a file under `path`
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Batch":
        """Read a file written by `Batch.save` (tensors on CPU). Never unpickles arbitrary objects."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Batch.load: no such file: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt file, or a pickle of arbitrary objects
            raise ValueError(
                f"Batch.load: {path} is not a Batch file written by Batch.save "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
            raise ValueError(
                f"Batch.load: {path} is not a Batch file written by Batch.save "
                f"(no {FORMAT_NAME!r} format marker)"
            )
        version = payload.get("version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"Batch.load: {path} has format version {version!r}; this rlkit reads "
                f"version {FORMAT_VERSION}"
            )
        fields = {**payload.get("tensors", {}), **payload.get("texts", {})}
        unknown = sorted(set(fields) - set(ALL_FIELDS))
        if unknown:
            raise ValueError(f"Batch.load: {path} has unknown field(s) {unknown}")
        batch = cls(**fields, batch_size=[payload["batch_size"]])
        return batch.validate()


# ---------------------------------------------------------------- helpers


def _pad_lengths(batches: list[Batch], names: Sequence[str], left: bool) -> list[Batch]:
    """Pad the dim-1 length of fields `names` to the longest over `batches` (zeros, left or right)."""
    lengths = [
        next((getattr(b, n).shape[1] for n in names if getattr(b, n) is not None), None)
        for b in batches
    ]
    if lengths[0] is None or len(set(lengths)) == 1:
        return batches
    target = max(lengths)
    out = []
    for part, length in zip(batches, lengths):
        if length == target:
            out.append(part)
            continue
        amount = (target - length, 0) if left else (0, target - length)
        padded = {n: F.pad(getattr(part, n), amount) for n in names if getattr(part, n) is not None}
        out.append(part.replace(**padded))
    return out


def _check_plain(item: Any, where: str) -> None:
    """Raise if `item` is not made of str/int/float/bool/None/list/tuple/dict (what weights_only loads)."""
    if item is None or isinstance(item, (str, int, float, bool)):
        return
    if isinstance(item, (list, tuple)):
        for i, sub in enumerate(item):
            _check_plain(sub, f"{where}[{i}]")
        return
    if isinstance(item, dict):
        for key, sub in item.items():
            _check_plain(key, f"{where} key")
            _check_plain(sub, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(item).__name__}; Batch.save stores only str, int, float, bool, "
        f"None and lists/tuples/dicts of them"
    )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
