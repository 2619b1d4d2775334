"""Driver-side plumbing shared by the SFT and reward-model stages.

`StageRunner` resolves the starting model (a folder / hub name, or the tiny preset
saved offline), loads the tokenizer and the data splits, starts the worker group on
the config's cluster (`ray` or `local` backend), hands out shuffled training rows,
shows a tqdm.auto progress bar, and exports the result. It holds no training logic:
the trainers in `sft.py` and `rm_training.py` say what a step is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch


class StageRunner:
    """One trained role in a worker group plus its data, for a pre-RL stage."""

    def __init__(
        self,
        cfg: Any,
        out_dir: str | Path,
        *,
        role: str,
        kind: str,
        optim: dict,
        micro_batch_size: int,
        role_kwargs: dict | None = None,
    ):
        """kind: "causal_lm" (a `PolicyWorker`) or "token_scores" (a trainable `RewardModelWorker`)."""
        from transformers import AutoTokenizer

        from rlkit.cluster import RoleSpec
        from rlkit.cluster.runtime import ClusterRuntime
        from rlkit.data import load_prompt_split, save_tiny_model
        from rlkit.workers.policy import PolicyWorker
        from rlkit.workers.reward_model import RewardModelWorker

        self.cfg, self.role, self.kind = cfg, role, kind
        self.out_dir = Path(out_dir)
        if cfg.model.path is None:
            self.model_dir = str(save_tiny_model(cfg.model.preset, self.out_dir / "init", seed=cfg.seed))
        else:
            self.model_dir = cfg.model.path
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer_path or self.model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.train = load_prompt_split(cfg.data, "train")
        self._eval = None
        self._order: list[int] = []
        self._epoch = 0

        cls = PolicyWorker if kind == "causal_lm" else RewardModelWorker
        kwargs = {
            "model": self.model_dir,
            "optim": optim,
            "micro_batch_size": micro_batch_size,
            "tokenizer_path": cfg.model.tokenizer_path,
            "attn_implementation": cfg.model.attn_implementation,
            "seed": cfg.seed,
            **(role_kwargs or {}),
        }
        if kind != "causal_lm":
            kwargs["trainable"] = True
        c = cfg.cluster
        self.runtime = ClusterRuntime(c.backend, c.address, c.num_cpus, cluster=c).start()
        self.group = self.runtime.make_group({role: RoleSpec(cls, kwargs=kwargs)}, name=role)
        self._hf = None
        self._bar = None

    # ------------------------------------------------------------------ data

    def next_rows(self, n: int) -> tuple[dict[str, list], list[int]]:
        """The next `n` training rows as columns, and their dataset row numbers (for error messages).

        Rows are visited in a seeded random order, reshuffled at every epoch.
        """
        picked: list[int] = []
        while len(picked) < n:
            if not self._order:
                g = torch.Generator().manual_seed(self.cfg.seed * 1000 + self._epoch)
                self._order = torch.randperm(len(self.train), generator=g).tolist()
                self._epoch += 1
            take = min(n - len(picked), len(self._order))
            picked += self._order[:take]
            self._order = self._order[take:]
        rows = self.train.select(picked)
        return {name: list(rows[name]) for name in rows.column_names}, picked

    def eval_rows(self, n: int):
        """The first `n` rows of the eval split (the same rows every time)."""
        from rlkit.data import load_prompt_split

        if self._eval is None or len(self._eval) < n:
            self._eval = load_prompt_split(self.cfg.data, "eval", num_rows=n)
        return self._eval.select(range(min(n, len(self._eval))))

    # ------------------------------------------------------------------ model

    def hf_model(self):
        """A plain transformers model in this process holding the workers' current weights."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        state = getattr(self.group, self.role).full_state_dict()
        if self._hf is None:
            config = AutoConfig.from_pretrained(self.model_dir)
            if self.kind == "causal_lm":
                self._hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            else:
                config.num_labels = 1
                self._hf = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        self._hf.load_state_dict(state)
        return self._hf.eval()

    def save(self, path: str | Path | None = None) -> Path:
        """Export the role's weights (and the tokenizer) as a Hugging Face folder."""
        path = Path(path) if path is not None else self.out_dir / "model"
        return Path(getattr(self.group, self.role).save_pretrained(path))

    # ------------------------------------------------------------------ progress

    def progress(self, steps: int, desc: str, enabled: bool) -> Iterator[int]:
        from tqdm.auto import tqdm

        with tqdm(total=steps, desc=desc, disable=not enabled) as bar:
            self._bar = bar
            for i in range(steps):
                yield i
                bar.update(1)
        self._bar = None

    def show(self, metrics: dict[str, float], keys: dict[str, str]) -> None:
        """Put a few metrics (`{label: metric key}`) on the progress bar."""
        if self._bar is not None:
            self._bar.set_postfix({label: f"{metrics[k]:.4g}" for label, k in keys.items() if k in metrics})

    def close(self) -> None:
        self.group.close()
        self.runtime.close()


@torch.no_grad()
def greedy_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_prompt_len: int,
    *,
    max_new_tokens: int,
    chat_template: bool = False,
    batch_size: int = 256,
) -> tuple[list[str], list[bool]]:
    """Greedy responses of a plain transformers model: (texts cut at the first EOS, eos_seen)."""
    from rlkit.data import decode_responses, encode_prompts

    texts, eos = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        ids, mask = encode_prompts(tokenizer, chunk, max_prompt_len, chat_template=chat_template)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )
        chunk_texts, chunk_eos = decode_responses(tokenizer, out[:, ids.shape[1] :])
        texts += chunk_texts
        eos += chunk_eos.tolist()
    return texts, eos


__all__ = ["StageRunner", "greedy_answers"]
