"""Warm starts for tiny models: supervised fine-tuning on episodes a scripted policy plays in an environment.

RL on a randomly initialised 0.2M-parameter model has nothing to work with: it never writes a number, let
alone a tool call. The built-in environments' presets therefore start from a policy that knows the format
but not the strategy: a scripted player (`guess_number.blind_guesser`, `calculator.sometimes_calls`) plays
episodes, they are encoded exactly as a multi-turn rollout encodes them (`rlkit.envs.turns`: same opening
prompt, same environment-turn ids), and the model is trained on the player's tokens only (the environment's
are context, as in RL). What RL must then learn is what the script did not know.

Runs in this process (one to three minutes on a CPU for the built-ins). The result is cached by a fingerprint of
everything that went into it: in `out_dir` when given, else in `$RLKIT_WARM_START_CACHE` (default
~/.cache/rlkit/warm-starts) under the environment's name and the fingerprint, so notebooks, tutorials and tests
on one machine share it. It is written to a temporary folder and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

ScriptFn = Callable[[list], str]
"""`act(history) -> action text`; history = [opening observation, action 1, observation 1, ...]."""


def play(env: Any, sample: dict, act: ScriptFn, max_turns: int) -> list:
    """One episode of the scripted policy: [opening observation, action 1, observation 1, ..., action k]."""
    history: list = [env.reset(sample)]
    for _ in range(max_turns):
        action = act(history)
        history.append(action)
        result = env.step(action)
        if result.done or result.observation is None:
            break
        history.append(result.observation)
    if len(history) % 2 == 1:  # ended on an observation: drop it (a rollout never appends a final one)
        history.pop()
    return history


def encode_episode(encoder: Any, tokenizer: Any, history: list, role: str = "user") -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a played episode, laid out as `EnvRollout` lays out a rollout's."""
    ids = list(encoder.first(history[0]))
    mask = [0] * len(ids)
    end = encoder.end_of_turn_ids if encoder.chat else [tokenizer.eos_token_id]
    for turn, item in enumerate(history[1:]):
        if turn % 2 == 0:  # the policy's action and its end-of-turn marker
            action = list(tokenizer(item, add_special_tokens=False)["input_ids"]) + list(end)
            ids += action
            mask += [1] * len(action)
        else:
            obs = encoder.next(item, turn_ended=True, role=role)
            ids += obs
            mask += [0] * len(obs)
    return ids, mask


def warm_start_cache() -> Path:
    """Where `warm_start` keeps its results when no `out_dir` is given."""
    return Path(os.environ.get("RLKIT_WARM_START_CACHE", Path.home() / ".cache" / "rlkit" / "warm-starts"))


def warm_start(cfg: Any, script: Callable[[random.Random], ScriptFn], out_dir: str | Path | None = None, *,
               episodes: int = 2048, steps: int = 300, batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> Path:
    """The tiny `cfg.model.preset` model (initialised with `cfg.seed`) fine-tuned on `episodes` scripted
    episodes of `cfg.env.name` over the training rows of `cfg.data`; a Hugging Face folder with its tokenizer
    (to set as `model.path`), returned. Cached: a second call with the same inputs returns at once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.data.datasets import batch_lists, load_prompt_split
    from rlkit.data.models import save_tiny_model
    from rlkit.envs.builtin import builtin_env
    from rlkit.envs.turns import TurnEncoder

    key = json.dumps({"model": cfg.model.preset, "init_seed": cfg.seed, "data": cfg.data.__dict__, "env": cfg.env.__dict__,
                      "script": getattr(script, "__qualname__", repr(script)), "episodes": episodes, "steps": steps,
                      "batch_size": batch_size, "lr": lr, "seed": seed}, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    target = Path(out_dir) if out_dir is not None else warm_start_cache() / f"{cfg.env.name}-{fingerprint}"
    if _fingerprint_of(target) == fingerprint:
        return target
    folder = target.parent / f".{target.name}.tmp-{os.getpid()}"  # renamed into place when complete
    shutil.rmtree(folder, ignore_errors=True)
    save_tiny_model(cfg.model.preset, folder, seed=cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    encoder = TurnEncoder(tokenizer, chat=cfg.data.use_chat_template is not False, system_prompt=cfg.data.system_prompt)
    table = load_prompt_split(cfg.data, "train")
    lists = batch_lists(table, cfg.data)
    rng = random.Random(seed)
    act = script(rng)
    make_env = builtin_env(cfg.env.name)
    rows = []
    for i in range(episodes):
        r = i % len(table)
        sample = {"prompt": table[r]["prompt"], "ground_truth": lists["ground_truth"][r],
                  "extra_info": lists["extra_info"][r], "data_source": lists["data_source"][r], "index": r}
        rows.append(encode_episode(encoder, tokenizer, play(make_env(), sample, act, cfg.env.max_turns),
                                   cfg.env.observation_role))
    losses = _fit(model, rows, steps=steps, batch_size=batch_size, lr=lr, seed=seed, pad=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    (folder / "warm_start.json").write_text(json.dumps({"fingerprint": fingerprint, "first_loss": losses[0],
                                                        "last_loss": losses[-1], "episodes": episodes}))
    if _fingerprint_of(target) != fingerprint:  # another process may have finished the same one meanwhile
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder, target)
    shutil.rmtree(folder, ignore_errors=True)
    return target


def _fingerprint_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "warm_start.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def warm_start_for(cfg: Any, out_dir: str | Path | None = None) -> Path:
    """`warm_start` with the recipe declared beside the built-in environment `cfg.env.name` (its `WARM_START`):
    the model folder to set as `model.path` (cached in `out_dir`, else under `warm_start_cache()`)."""
    import importlib

    from rlkit.envs.builtin import BUILTIN_ENVS

    if cfg.env.name not in BUILTIN_ENVS:
        raise ValueError(f"warm_start_for: env.name = {cfg.env.name!r} is not a built-in environment "
                         f"({', '.join(BUILTIN_ENVS)}); call warm_start with a script of your own")
    recipe = importlib.import_module(BUILTIN_ENVS[cfg.env.name].split(":")[0]).WARM_START
    return warm_start(cfg, recipe.script, out_dir, episodes=recipe.episodes, steps=recipe.steps, lr=recipe.lr)


def _fit(model, rows: list[tuple[list[int], list[int]]], *, steps: int, batch_size: int, lr: float, seed: int,
         pad: int) -> list[float]:
    """AdamW with a cosine decay on the masked next-token loss; the loss of every step."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    # 20 steps of linear warm-up, then a cosine decay to a tenth
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    model.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(rows), (batch_size,), generator=gen).tolist()
        width = max(len(rows[i][0]) for i in pick)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)  # (b, L) right-padded
        attn = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)  # only the player's tokens are learned
        for j, i in enumerate(pick):
            seq, mask = rows[i]
            ids[j, :len(seq)] = torch.tensor(seq)
            attn[j, :len(seq)] = 1
            labels[j, :len(seq)] = torch.where(torch.tensor(mask).bool(), torch.tensor(seq), torch.tensor(-100))
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


__all__ = ["play", "encode_episode", "warm_start", "warm_start_cache", "warm_start_for"]
