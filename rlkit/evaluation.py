"""`Session.evaluate`: greedy accuracy, mean reward and pass@k on the eval split."""

from __future__ import annotations

from typing import Any

import torch

from rlkit.batch import Batch


def evaluate_session(s: Any, *, num_prompts: int | None = None, k: int = 0) -> dict:
    """What `Session.evaluate` returns and logs (its docstring says how samples are scored)."""
    from rlkit.monitor.progress import progress_bar

    if num_prompts is not None and num_prompts < 1:
        raise ValueError(f"Session.evaluate: num_prompts = {num_prompts}, no eval prompts to evaluate")
    prompts = s.prompts.eval_batch(num_prompts)
    # Chunks of one rollout batch (samples, not prompts) keep memory what training uses, and let a
    # progress bar move on a large eval split.
    per_chunk = max(1, s.config.rollout_batch_size // max(k, 1))
    starts = range(0, len(prompts), per_chunk)
    greedy_parts: list[Batch] = []
    solved = torch.zeros(len(prompts), dtype=torch.bool)
    with s.monitor.stage("eval") as rec:
        for start in progress_bar(starts, desc="eval", leave=False, disable=len(starts) < 2):
            chunk = prompts.select(list(range(start, min(start + per_chunk, len(prompts)))))
            part = s.rollout(chunk, greedy=True)
            greedy_parts.append(part.replace(scores=s._eval_scores(part, "evaluate")))
            if k:
                sampled = s.rollout(chunk, n=k)
                correct = s._eval_scores(sampled, f"evaluate pass@{k}") > 0.5
                solved[sampled.group_id[correct] + start] = True  # group ids count within the chunk
        greedy = Batch.concat(greedy_parts)
        out = {"eval/accuracy": float((greedy.scores > 0.5).float().mean()),
               "eval/reward": float(greedy.scores.float().mean())}
        if k:
            out[f"eval/pass@{k}"] = float(solved.float().mean())
        rec.update(stats=out, batch=greedy)
    s.monitor.log_eval(s.steps_done, out)
    return out
