"""What a Session needs from the data layer: the starting model folder, the prompt stream, the rules.

- `resolve_model(cfg, run_dir)`: `model.path` as given (hub name or folder), or a tiny
  preset (`model.preset`) built once and saved under `run_dir/model`.
- `PromptStream`: the train and eval prompt splits of `cfg.data`, encoded to `Batch`es
  of `rollout.prompts_per_step` prompts; the train cursor reshuffles (seeded) on every pass.
- `task_rules(cfg)`: the reward and cost rules that score the task's responses.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

from rlkit.batch import Batch

RuleFn = Callable[[str, Any, bool], float]


def resolve_model(cfg: Any, run_dir: str | os.PathLike) -> str:
    """The policy's starting weights: `cfg.model.path`, else the tiny preset saved under `run_dir/model`."""
    if cfg.model.path:
        return str(cfg.model.path)
    from rlkit.data.models import save_tiny_model

    folder = Path(run_dir) / "model"
    if not (folder / "config.json").is_file():
        save_tiny_model(cfg.model.preset, folder, seed=cfg.seed)
    return str(folder)


def load_driver_tokenizer(model_path: str, tokenizer_path: str | None = None):
    """The tokenizer the driver encodes prompts and decodes responses with (hub name or folder)."""
    from transformers import AutoTokenizer

    source = tokenizer_path or model_path
    local = os.path.expanduser(source)
    if source.startswith(("/", ".", "~")) and not os.path.exists(local):
        raise FileNotFoundError(f"model.tokenizer_path / model.path {source!r} does not exist")
    tok = AutoTokenizer.from_pretrained(local if os.path.exists(local) else source)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # generation needs a pad id for left padding
    return tok


def task_rules(cfg: Any) -> tuple[RuleFn, RuleFn | None]:
    """(reward rule, cost rule or None) for `cfg.data.source`.

    The built-in arithmetic task has both (exact answer then EOS; the rule cost in
    `rlkit.data.arithmetic`). Other sources are scored by exact match of the
    ground truth followed by EOS (the same rule, which compares strings) and have
    no cost rule: pass `reward_fn` / `cost_fn` to the Session for anything else.
    """
    from rlkit.data.arithmetic import arithmetic_cost, arithmetic_reward

    if cfg.data.source == "arithmetic":
        return arithmetic_reward, arithmetic_cost
    return arithmetic_reward, None


class PromptStream:
    """Train prompts in seeded shuffled passes, and the fixed eval prompts, as prompt `Batch`es."""

    def __init__(self, cfg: Any, tokenizer: Any):
        from rlkit.data.datasets import load_prompt_split

        self.cfg, self.tokenizer = cfg, tokenizer
        self.train = load_prompt_split(cfg.data, "train")
        self.eval = load_prompt_split(cfg.data, "eval")
        self._rng = random.Random(cfg.data.seed)
        self._order: list[int] = []
        self.epoch = -1
        """Passes over the training prompts started so far (0-based)."""

    def encode(self, prompts: list[str], ground_truth: list[Any] | None = None) -> Batch:
        """A prompt Batch (left-padded ids and masks) for raw prompt strings."""
        from rlkit.data.datasets import encode_prompts

        ids, mask = encode_prompts(
            self.tokenizer, prompts, self.cfg.data.max_prompt_len, chat_template=self.cfg.data.use_chat_template
        )
        truth = list(ground_truth) if ground_truth is not None else [""] * len(prompts)
        return Batch.from_prompts(ids, mask, prompt_text=list(prompts), ground_truth=truth)

    def next_train(self, count: int | None = None) -> Batch:
        """The next `count` (default `rollout.prompts_per_step`) training prompts."""
        count = count or self.cfg.rollout.prompts_per_step
        rows = []
        while len(rows) < count:
            if not self._order:
                self._order = list(range(len(self.train)))
                self._rng.shuffle(self._order)
                self.epoch += 1
            rows.append(self._order.pop())
        return self._rows(self.train, rows)

    def eval_batch(self, count: int | None = None) -> Batch:
        """The first `count` eval prompts (all of them by default), always the same ones."""
        count = len(self.eval) if count is None else min(count, len(self.eval))
        return self._rows(self.eval, list(range(count)))

    def _rows(self, table, rows: list[int]) -> Batch:
        picked = table.select(rows)
        return self.encode(list(picked["prompt"]), list(picked["ground_truth"]))

    def state_dict(self) -> dict:
        return {"order": list(self._order), "epoch": self.epoch, "rng": self._rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self._order, self.epoch = list(state["order"]), state["epoch"]
        self._rng.setstate(state["rng"])
