"""Multi-turn rollouts: the policy and an environment take turns, token in, token out.

One episode per sample: `reset(sample)` opens it, then each turn the policy generates (every live episode of
the batch in one engine call, the hf or vLLM engine alike) and the environment answers with `step(text)`
(all episodes side by side on threads, each step with a deadline). The episode ends when the environment
says `done`, after `env.max_turns` policy turns, or when the next turn would not fit `env.max_tokens`.

The batch this returns has one row per episode. `prompt_ids` is the opening observation; `response_ids` is
everything after it, the policy's turns and the environment's interleaved, each policy token exactly as the
engine sampled it (the history is never decoded and re-encoded: see `rlkit.envs.turns`):

    response_ids   [ policy turn 1 | env turn 1 | policy turn 2 | env turn 2 | policy turn 3 ] pad pad
    response_mask  [ 1 1 1 1 1 1 1 | 1 1 1 1 1  | 1 1 1 1 1 1 1 | 1 1 1 1 1  | 1 1 1 1 1 1 1 ]  0   0
    loss_mask      [ 1 1 1 1 1 1 1 | 0 0 0 0 0  | 1 1 1 1 1 1 1 | 0 0 0 0 0  | 1 1 1 1 1 1 1 ]  0   0
    turn_rewards   [ 0 ...     r_1 | 0 ...      | 0 ...     r_2 | 0 ...      | 0 ...     r_3 ]  0   0

`scores` is the sum of the step rewards; an episode always ends on a policy turn (a final observation has
nothing left to answer it and is not appended).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlkit.batch import Batch
from rlkit.envs.base import as_step_result
from rlkit.envs.calls import CallTimeout, run_calls
from rlkit.envs.turns import TurnEncoder

GenerateFn = Callable[[Batch, Any], Batch]
"""`generate(prompts, sampling_params) -> Batch` of the actor's rollout engine (`s.roles["actor"].generate`)."""


class EnvError(RuntimeError):
    """An environment failed (raised, timed out, or answered something that is not a `StepResult`); the message
    names the environment, the sample and the turn."""


@dataclass
class Episode:
    """One episode's state while the rollout runs: its token ids and what each token is."""

    env: Any
    row: int
    """The prompt row of the rollout's input batch it was drawn for (its group)."""
    copy: int
    """Which of the row's `n` episodes this is (0-based)."""
    sample: dict[str, Any]
    context: list[int] = field(default_factory=list)
    """The opening prompt's ids."""
    ids: list[int] = field(default_factory=list)
    """Everything after the prompt: policy and environment tokens."""
    policy: list[int] = field(default_factory=list)
    """1 on policy tokens, 0 on environment tokens (aligned with `ids`)."""
    logprobs: list[float] = field(default_factory=list)
    """The engine's log-prob of each policy token, 0.0 on environment tokens."""
    rewards: list[float] = field(default_factory=list)
    """Step rewards on the last token of the turn they answer (aligned with `ids`)."""
    turns: int = 0
    done: bool = False
    """The environment ended the episode."""
    finished: bool = False
    """Nothing more is generated (done, out of turns or tokens, or an error)."""
    error: str | None = None
    info: dict[str, float] = field(default_factory=dict)
    """Numeric `StepResult.info` values, summed over the episode's steps."""


class EnvRollout:
    """Runs episodes of an environment with the policy (the multi-turn rollout behind `Session.rollout`).

    make_env: a zero-argument callable returning a fresh environment per episode (an `Env` class works).
    tokenizer: the policy's tokenizer. env_cfg: the config's `env` section (`rlkit.config.EnvConfig`).
    chat: render observations with the chat template. system_prompt: `data.system_prompt`."""

    def __init__(self, make_env: Callable[[], Any], tokenizer: Any, env_cfg: Any, *, chat: bool,
                 system_prompt: str | None = None):
        from rlkit.envs.tools import tool_schema

        self.make_env, self.tokenizer, self.cfg = make_env, tokenizer, env_cfg
        self.name = getattr(make_env, "__name__", type(make_env).__name__)
        """The environment's name in errors and logs (its class name)."""
        if not callable(make_env):
            raise TypeError(f"env: {make_env!r} is not callable; give an environment class (rlkit.envs.Env: reset "
                            "and step) or a zero-argument function returning a fresh environment")
        probe = make_env()
        missing = [m for m in ("reset", "step") if not callable(getattr(probe, m, None))]
        if missing:
            raise TypeError(f"env: {self.name} makes {type(probe).__name__} objects, which have no "
                            f"{' and no '.join(missing)} method (rlkit.envs.Env: reset(sample) -> observation, "
                            "step(action_text) -> StepResult)")
        tools = [tool_schema(fn) for fn in getattr(probe, "tools", None) or []]
        self.encoder = TurnEncoder(tokenizer, chat=chat, system_prompt=system_prompt, tools=tools)
        if self.encoder.template_ignores_tools:
            import warnings

            warnings.warn(f"env: {self.name} has tools ({', '.join(t['function']['name'] for t in tools)}) but the "
                          "tokenizer's chat template writes nothing for tools=: the model knows them only if data.system_prompt "
                          "describes them (the calculator-smollm2 preset) or it was trained on the format (the tiny "
                          "presets' warm start)", stacklevel=2)
        self.last_stats: dict[str, float] = {}
        """`env/*` metrics of the last rollout: turns, success, errors, timeouts, tool calls ..."""
        self._info_keys: set[str] = set()  # numeric info keys seen so far: reported (as 0) every rollout after

    # ------------------------------------------------------------------ the loop

    def rollout(self, generate: GenerateFn, prompts: Batch, params: Any) -> Batch:
        """`params.n` episodes per prompt row of `prompts` (prompt-major, like the engines' output)."""
        from rlkit.data.datasets import left_pad, pad_token_id

        cfg, start = self.cfg, time.perf_counter()
        episodes = [Episode(self.make_env(), row, copy, _sample(prompts, row))
                    for row in range(len(prompts)) for copy in range(params.n)]
        self._open(episodes, prompts)
        turn_params = dataclasses.replace(params, n=1)
        pad = pad_token_id(self.tokenizer)
        for turn in range(cfg.max_turns):
            live = [e for e in episodes if not e.finished]
            if not live:
                break
            room = max(cfg.max_tokens - len(e.ids) for e in live)
            ids, mask = left_pad([e.context + e.ids for e in live], pad)
            out = generate(Batch.from_prompts(ids, mask), dataclasses.replace(
                turn_params, max_new_tokens=min(params.max_new_tokens, room),
                min_new_tokens=min(params.min_new_tokens, room)))
            texts = []
            for i, e in enumerate(live):
                k = min(int(out.response_mask[i].sum()), cfg.max_tokens - len(e.ids))  # tokens past the budget are dropped
                sampled = out.response_ids[i, :k].tolist()
                e.ids += sampled
                e.policy += [1] * k
                e.logprobs += out.rollout_logprobs[i, :k].tolist()
                e.rewards += [0.0] * k
                e.turns += 1
                texts.append(self.tokenizer.decode(sampled, skip_special_tokens=True))
            self._step(live, texts, turn)
        return self._batch(prompts, episodes, time.perf_counter() - start)

    def _open(self, episodes: list[Episode], prompts: Batch) -> None:
        """`reset` every episode (side by side); the opening prompt is the observation, or the prompt row's own
        ids when `reset` returns None."""
        outcomes = run_calls([lambda e=e: e.env.reset(e.sample) for e in episodes],
                             num_workers=self.cfg.num_workers, timeout_s=self.cfg.step_timeout_s)
        for e, outcome in zip(episodes, outcomes):
            obs = outcome.value
            if outcome.error is None and obs is not None and not _is_observation(obs):
                outcome.error = TypeError(f"reset() returned {type(obs).__name__}; it must return a string, a list "
                                          "of chat messages ({'role': ..., 'content': ...}) or None")
            if outcome.error is not None:
                self._fail(e, outcome.error, "reset", turn=0)
            if obs is None or outcome.error is not None:
                e.context = prompts.prompt_ids[e.row][prompts.prompt_mask[e.row].bool()].tolist()
            else:
                e.context = self.encoder.first(obs)

    def _step(self, live: list[Episode], texts: list[str], turn: int) -> None:
        """The environment's answer to each live episode's turn: rewards, the end, or its next observation."""
        stepping = [(e, text) for e, text in zip(live, texts) if not e.finished]  # failed at reset: no step
        outcomes = run_calls([lambda e=e, t=t: e.env.step(t) for e, t in stepping],
                             num_workers=self.cfg.num_workers, timeout_s=self.cfg.step_timeout_s)
        for (e, _), outcome in zip(stepping, outcomes):
            try:
                if outcome.error is not None:
                    raise outcome.error
                result = as_step_result(outcome.value)  # _fail names the place
            except Exception as err:  # noqa: BLE001 - every failure is the environment's, named and counted
                self._fail(e, err, "step", turn + 1)
                continue
            e.rewards[-1] += result.reward
            for key, value in result.info.items():
                if isinstance(value, (int, float)):  # bools count as 0 / 1
                    e.info[key] = e.info.get(key, 0.0) + float(value)
            e.done = result.done
            if result.done or e.turns >= self.cfg.max_turns or result.observation is None:
                e.finished = True
                continue
            ended = e.ids[-len(self.encoder.end_of_turn_ids):] == self.encoder.end_of_turn_ids \
                if self.encoder.chat else True
            obs_ids = self.encoder.next(result.observation, turn_ended=ended, role=self.cfg.observation_role)
            if len(e.ids) + len(obs_ids) >= self.cfg.max_tokens:  # no room left for a policy token
                e.finished = True
                continue
            e.ids += obs_ids
            e.policy += [0] * len(obs_ids)
            e.logprobs += [0.0] * len(obs_ids)
            e.rewards += [0.0] * len(obs_ids)
        for e in live:
            if not e.finished and len(e.ids) >= self.cfg.max_tokens:
                e.finished = True

    def _fail(self, e: Episode, err: BaseException, call: str, turn: int) -> None:
        """An environment failure: raise it (env.on_error = "raise") or end the episode where it is ("end")."""
        what = "timed out" if isinstance(err, CallTimeout) else f"{type(err).__name__}"
        message = (f"environment {self.name}, sample {e.row} ({_describe(e.sample)}; episode {e.copy} of its "
                   f"group), turn {turn}: {call}() {what}: {err}")
        if self.cfg.on_error == "raise":
            raise EnvError(message + ' (env.on_error = "end" ends such an episode and goes on)') from err
        e.error, e.finished = message, True
        key = "timeouts" if isinstance(err, CallTimeout) else "errors"
        e.info[key] = e.info.get(key, 0.0) + 1.0

    # ------------------------------------------------------------------ the batch

    def _batch(self, prompts: Batch, episodes: list[Episode], seconds: float) -> Batch:
        from rlkit.data.datasets import left_pad, pad_token_id

        pad = pad_token_id(self.tokenizer)
        prompt_ids, prompt_mask = left_pad([e.context for e in episodes], pad)
        width = max(1, max(len(e.ids) for e in episodes))
        size = len(episodes)
        ids = torch.full((size, width), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros((size, width), dtype=torch.long)
        loss = torch.zeros((size, width), dtype=torch.long)
        logprobs = torch.zeros((size, width), dtype=torch.float32)
        rewards = torch.zeros((size, width), dtype=torch.float32)
        for i, e in enumerate(episodes):
            n = len(e.ids)
            ids[i, :n] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, :n] = 1
            loss[i, :n] = torch.tensor(e.policy, dtype=torch.long)
            logprobs[i, :n] = torch.tensor(e.logprobs, dtype=torch.float32)
            rewards[i, :n] = torch.tensor(e.rewards, dtype=torch.float32)
        rows = [e.row for e in episodes]
        lists = {name: [getattr(prompts, name)[r] for r in rows] if getattr(prompts, name) is not None else None
                 for name in ("ground_truth", "data_source")}
        extra = [{**(prompts.extra_info[e.row] if prompts.extra_info is not None else {}),
                  "env": {"turns": e.turns, "done": e.done, "error": e.error, **e.info}} for e in episodes]
        self._info_keys |= {k for e in episodes for k in e.info}
        self.last_stats = episode_stats(episodes, seconds, self._info_keys)
        return Batch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=ids, response_mask=mask, loss_mask=loss,
            rollout_logprobs=logprobs, turn_rewards=rewards, scores=rewards.sum(-1),
            group_id=(prompts.group_id[rows] if prompts.group_id is not None else torch.tensor(rows)).long(),
            prompt_text=[self.tokenizer.decode(e.context) for e in episodes],
            response_text=[self.tokenizer.decode(e.ids) for e in episodes],
            extra_info=extra, **lists, batch_size=[size]).validate()


def env_rollout_for(cfg: Any, env: Any, tokenizer: Any) -> EnvRollout | None:
    """The Session's multi-turn rollout: for `env` (`Session(env=...)`), else the built-in `env.name`, else None."""
    if env is None and cfg.env.name is None:
        return None
    if env is None:
        from rlkit.envs.builtin import builtin_env

        env = builtin_env(cfg.env.name)
    if cfg.rollout.async_steps:
        from rlkit.config import ConfigError

        raise ConfigError(f"rollout.async_steps = {cfg.rollout.async_steps}: needs 0 with an environment (the "
                          "rollout pool generates single-turn responses; multi-turn episodes run synchronously)")
    use = cfg.data.use_chat_template
    chat = use is True or (use == "auto" and getattr(tokenizer, "chat_template", None) is not None)
    return EnvRollout(env, tokenizer, cfg.env, chat=chat, system_prompt=cfg.data.system_prompt)


def episode_stats(episodes: list[Episode], seconds: float, info_keys: set[str] = frozenset()) -> dict[str, float]:
    """The rollout's `env/*` metrics: mean turns, the fraction that the environment ended (`done_frac`), with
    a positive reward (`success`), that hit a limit (`truncated_frac`), failed (`errors`, `timeouts`: counts),
    and the mean of every numeric `info` key per episode (`env/tool_calls` ...; those of `info_keys` too, as 0
    when no episode reported them, so a curve has no gaps)."""
    n = max(1, len(episodes))
    out = {"env/turns_mean": sum(e.turns for e in episodes) / n,
           "env/done_frac": sum(e.done for e in episodes) / n,
           "env/success": sum(sum(e.rewards) > 0 for e in episodes) / n,
           "env/truncated_frac": sum(not e.done and e.error is None for e in episodes) / n,
           "env/policy_tokens_mean": sum(sum(e.policy) for e in episodes) / n,
           "env/env_tokens_mean": sum(len(e.policy) - sum(e.policy) for e in episodes) / n,
           "env/seconds": seconds}
    keys = sorted({k for e in episodes for k in e.info} | set(info_keys) | {"errors", "timeouts"})
    for key in keys:
        total = sum(e.info.get(key, 0.0) for e in episodes)
        out[f"env/{key}"] = total if key in ("errors", "timeouts") else total / n
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _sample(prompts: Batch, row: int) -> dict[str, Any]:
    """The dataset row an episode is reset with: the rendered prompt, the ground truth and the extras."""
    def at(name):
        values = getattr(prompts, name)
        return values[row] if values is not None else None

    return {"prompt": at("prompt_text"), "ground_truth": at("ground_truth"), "data_source": at("data_source"),
            "extra_info": at("extra_info") or {}, "index": row}


def _describe(sample: dict) -> str:
    truth = sample.get("ground_truth")
    return f"ground_truth {truth!r:.60}" if truth is not None else f"prompt {sample.get('prompt')!r:.60}"


def _is_observation(obs: Any) -> bool:
    return isinstance(obs, str) or (isinstance(obs, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in obs))


__all__ = ["EnvRollout", "EnvError", "Episode", "env_rollout_for", "episode_stats"]
