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
    from rlkit.data.models import check_model_source

    # Every model source of the config is checked here, on the driver, before any worker starts: a
    # missing folder or an unreachable hub name fails at once and names its config field.
    for field in ("tokenizer_path", "reward_model_path", "cost_model_path", "critic_path"):
        if getattr(cfg.model, field):
            check_model_source(getattr(cfg.model, field), f"model.{field}")
    if cfg.model.path:
        return check_model_source(cfg.model.path, "model.path")
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
    """(reward rule, cost rule or None) for `cfg`.

    The reward: your function when `reward.path` is set (`rlkit.rewards.load_reward_fn` with `reward.name`
    and `reward.style`: rlkit's rule or verl's compute_score), else a built-in task's own
    (`rlkit.data.tasks`: arithmetic has exact answer then EOS; chat_sums the reply's last number), else
    `rlkit.rewards.math_reward` (the reply's final answer, boxed / "####" / "the answer is" / last number,
    compared by value with the ground truth; EOS not required). The cost: a built-in task's rule cost,
    else None. `Session(reward_fn=..., cost_fn=...)` overrides both.
    """
    from rlkit.data.tasks import get_task
    from rlkit.rewards import load_reward_fn, math_reward

    task = get_task(cfg.data.source)
    reward, cost = (task.reward, task.cost) if task is not None else (math_reward, None)
    if cfg.reward.path is not None:
        reward = load_reward_fn(cfg.reward.path, cfg.reward.name, cfg.reward.style)
    return reward, cost


class PromptStream:
    """Train prompts in seeded shuffled passes, and the fixed eval prompts, as prompt `Batch`es."""

    def __init__(self, cfg: Any, tokenizer: Any):
        from rlkit.data.datasets import encode_split, load_prompt_split

        self.cfg, self.tokenizer = cfg, tokenizer
        self.train = load_prompt_split(cfg.data, "train")
        self.eval = load_prompt_split(cfg.data, "eval")
        # Every prompt rendered and tokenized once, here on the driver: a prompt longer than
        # data.max_prompt_len (or a message list without the chat template) fails before any worker starts.
        self._encoded = {split: encode_split(tokenizer, table, cfg.data, split)
                         for split, table in (("train", self.train), ("eval", self.eval))}
        """split -> (rendered prompt texts, token ids) per row of `train` / `eval`."""
        self._rng = random.Random(cfg.data.seed)
        self._order: list[int] = []
        self.epoch = -1
        """Passes over the training prompts started so far (0-based)."""

    def encode(self, prompts: list, ground_truth: list[Any] | None = None) -> Batch:
        """A prompt Batch (left-padded ids and masks) for prompts given as texts or chat message lists."""
        from rlkit.data.datasets import left_pad, pad_token_id, render_prompts, tokenize_rendered

        d = self.cfg.data
        if len(prompts) == 0:
            raise ValueError("PromptStream.encode got no prompts")
        texts, templated = render_prompts(self.tokenizer, prompts, chat_template=d.use_chat_template,
                                          system_prompt=d.system_prompt)
        ids = tokenize_rendered(self.tokenizer, texts, templated)
        for i, row in enumerate(ids):
            if not 0 < len(row) <= d.max_prompt_len:
                raise ValueError(f"data.max_prompt_len = {d.max_prompt_len} but prompt {i} has a {len(row)}-token "
                                 f"prompt: raise data.max_prompt_len or shorten the prompt ({texts[i]!r:.120})")
        prompt_ids, prompt_mask = left_pad(ids, pad_token_id(self.tokenizer))
        truth = list(ground_truth) if ground_truth is not None else [""] * len(prompts)
        return Batch.from_prompts(prompt_ids, prompt_mask, prompt_text=texts, ground_truth=truth,
                                  data_source=[str(d.source)] * len(prompts), extra_info=[{} for _ in prompts])

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
        return self._rows("train", rows)

    def eval_batch(self, count: int | None = None) -> Batch:
        """The first `count` eval prompts (all of them by default), always the same ones."""
        count = len(self.eval) if count is None else min(count, len(self.eval))
        return self._rows("eval", list(range(count)))

    def _rows(self, split: str, rows: list[int]) -> Batch:
        """Rows of a split as a prompt Batch, from the ids encoded at load time."""
        from rlkit.data.datasets import batch_lists, left_pad, pad_token_id

        if not rows:
            raise ValueError(f"no {split} prompts to encode (data.eval_size = {self.cfg.data.eval_size})")
        texts, ids = self._encoded[split]
        prompt_ids, prompt_mask = left_pad([ids[r] for r in rows], pad_token_id(self.tokenizer))
        picked = (self.train if split == "train" else self.eval).select(rows)
        return Batch.from_prompts(prompt_ids, prompt_mask, prompt_text=[texts[r] for r in rows],
                                  **batch_lists(picked, self.cfg.data))

    def state_dict(self) -> dict:
        return {"order": list(self._order), "epoch": self.epoch, "rng": self._rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self._order, self.epoch = list(state["order"]), state["epoch"]
        self._rng.setstate(state["rng"])
