"""Looking at samples: a Batch as a table of rows, and one response coloured token by token.

- `batch_table_rows(batch)`: plain dicts (prompt, response, score, advantage, length ...),
  shared by the HTML table, `RunLog.log_samples` and the W&B samples table;
- `batch_table_html(batch)`: that table as HTML (what `Batch._repr_html_` shows in Jupyter);
- `token_view_html(batch, tokenizer, row, color_by=...)`: each response token of one row
  on a colour scale of its log-prob, entropy, advantage, rollout/trainer log-prob gap or importance
  weight pi_old / pi_rollout (the ratio `algo.rollout_is` truncates; stale rows of asynchronous runs).

Multi-turn batches (`Batch.loss_mask` set, `rlkit.envs`): `response_ids` interleaves the policy's turns
with the environment's. The token view draws environment / tool tokens grey and italic, uncoloured and
outside the colour scale (the policy did not sample them: they have no log-prob, gap or weight of their
own), and puts a badge `r=...` after the token that carries a step reward (`Batch.turn_rewards`);
the table adds `policy_tokens` and `turns` per row.
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional

import torch

COLOR_BY = ("logprob", "entropy", "advantage", "logprob_gap", "is_weight")
_MAX_CHARS = 2000  # longer texts are cut in the table (the full text stays in the Batch)

_TABLE_CSS = (
    "<style>"
    ".rlkit-batch td,.rlkit-batch th{text-align:left;vertical-align:top;padding:2px 8px;"
    "border-bottom:1px solid #ddd}"
    ".rlkit-batch td.txt{font-family:monospace;white-space:pre-wrap;max-width:40em}"
    ".rlkit-tokens{font-family:monospace;white-space:pre-wrap;line-height:1.7}"
    ".rlkit-tokens span.tok{border-radius:2px;padding:1px 0}"
    "</style>"
)


# ------------------------------------------------------------------ table


def _valid_mask(batch, row: Optional[int] = None) -> torch.Tensor:
    """(B, T) or (T,) bool: real response tokens (all of `response_ids` when there is no mask)."""
    if batch.response_mask is not None:
        mask = batch.response_mask.bool()
    elif batch.response_ids is not None:
        mask = torch.ones_like(batch.response_ids, dtype=torch.bool)
    else:
        raise ValueError("batch has neither response_mask nor response_ids: no responses to show")
    return mask if row is None else mask[row]


def _policy_turns(policy: torch.Tensor) -> torch.Tensor:
    """(B,) number of policy turns per row: runs of 1s in a (B, T) 0/1 `loss_mask`."""
    policy = policy.long()
    starts = policy[:, 1:] > policy[:, :-1]  # (B, T-1): a policy token after a non-policy one
    return policy[:, :1].sum(-1) + starts.sum(-1)


def _ids_text(ids: torch.Tensor, mask: Optional[torch.Tensor]) -> str:
    valid = ids if mask is None else ids[mask.bool()]
    return "ids " + str(valid.tolist())


def _text(batch, row: int, text_field: str, ids_field: str, mask_field: str) -> Optional[str]:
    texts = getattr(batch, text_field)
    if texts is not None:
        return str(texts[row])
    ids = getattr(batch, ids_field)
    if ids is not None:  # no decoded text yet: show the token ids
        mask = getattr(batch, mask_field)
        return _ids_text(ids[row], None if mask is None else mask[row])
    return None


def batch_table_rows(batch, max_rows: Optional[int] = 16) -> list[dict[str, Any]]:
    """The first `max_rows` rows (None: all) as plain dicts with keys `row`, `prompt`, `response`,
    `score`, `advantage` (mean over the trained tokens: `Batch.policy_mask()`), `length` (valid
    response tokens: in a multi-turn batch, policy and environment tokens), and `cost` /
    `ground_truth` / `group` when the batch has them; a multi-turn batch (`loss_mask` set) adds
    `policy_tokens` (tokens the policy sampled) and `turns` (policy turns). Absent values are None."""
    size = len(batch)
    count = size if max_rows is None else min(size, max_rows)
    has_response = batch.response_mask is not None or batch.response_ids is not None
    mask = _valid_mask(batch).float() if has_response else None  # (B, T)
    lengths = mask.sum(-1) if mask is not None else None  # (B,)
    # Multi-turn: only the policy's own tokens are trained; environment tokens are context.
    policy = batch.loss_mask.float() * mask if batch.loss_mask is not None and mask is not None else mask
    trained = policy.sum(-1) if policy is not None else None  # (B,)
    turns = _policy_turns(policy) if batch.loss_mask is not None and policy is not None else None  # (B,)
    adv_mean = None
    if batch.advantages is not None and policy is not None:
        # Mean over trained tokens only: padding and environment tokens hold zeros (or garbage) that must not dilute it.
        adv_mean = (batch.advantages.float() * policy).sum(-1) / trained.clamp(min=1)  # (B,)
    rows = []
    for r in range(count):
        item: dict[str, Any] = {
            "row": r,
            "prompt": _text(batch, r, "prompt_text", "prompt_ids", "prompt_mask"),
            "response": _text(batch, r, "response_text", "response_ids", "response_mask"),
            "score": None if batch.scores is None else float(batch.scores[r]),
            "advantage": None if adv_mean is None or trained[r] == 0 else float(adv_mean[r]),
            "length": None if lengths is None else int(lengths[r]),
        }
        if turns is not None:
            item["policy_tokens"] = int(trained[r])
            item["turns"] = int(turns[r])
        if batch.costs is not None:
            item["cost"] = float(batch.costs[r])
        if batch.ground_truth is not None:
            item["ground_truth"] = batch.ground_truth[r]
        if batch.group_id is not None:
            item["group"] = int(batch.group_id[r])
        rows.append(item)
    return rows


def _cell(value: Any, is_text: bool) -> str:
    if value is None:
        return '<td style="color:#999">—</td>'
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    text = str(value)
    if len(text) > _MAX_CHARS:
        text = text[:_MAX_CHARS] + " …"
    return f'<td class="txt">{html.escape(text)}</td>' if is_text else f"<td>{html.escape(text)}</td>"


def batch_table_html(batch, max_rows: int = 16) -> str:
    """An HTML table of the first `max_rows` rows (see `batch_table_rows`) under a one-line summary."""
    rows = batch_table_rows(batch, max_rows=max_rows)
    columns = ["row", "prompt", "response", "ground_truth", "score", "cost", "advantage", "length",
               "policy_tokens", "turns", "group"]
    columns = [c for c in columns if any(c in r and r[c] is not None for r in rows)]
    fields = ", ".join(batch.present_fields()) if hasattr(batch, "present_fields") else ""
    shown = f"first {len(rows)} of {len(batch)} rows" if len(rows) < len(batch) else f"{len(batch)} rows"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(r.get(c), c in ("prompt", "response", "ground_truth")) for c in columns) + "</tr>"
        for r in rows
    )
    return (
        f'{_TABLE_CSS}<div class="rlkit-batch"><div><b>Batch</b>: {shown}'
        f'<br><small>fields: {html.escape(fields)}</small></div>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


# ------------------------------------------------------------ token view


def _need(batch, name: str, color_by: str):
    value = getattr(batch, name)
    if value is None:
        raise ValueError(
            f"token_view_html(color_by={color_by!r}) needs Batch.{name}, which is not set on this batch "
            f"(set fields: {', '.join(batch.present_fields())})"
        )
    return value


def response_entropy(model: torch.nn.Module, batch, row: int) -> torch.Tensor:
    """(T,) entropy (nats) of the model's next-token distribution at each response position of `row`.

    Runs the model once on the row's valid prompt tokens followed by its response;
    the distribution that produced response token t is read at position P_valid - 1 + t.
    """
    prompt_ids = _need(batch, "prompt_ids", "entropy")[row]
    response_ids = _need(batch, "response_ids", "entropy")[row]
    prompt_mask = batch.prompt_mask[row].bool() if batch.prompt_mask is not None else torch.ones_like(prompt_ids, dtype=torch.bool)
    prompt = prompt_ids[prompt_mask]  # (P_valid,) left padding removed
    device = next(model.parameters(), torch.empty(0)).device
    ids = torch.cat([prompt, response_ids]).unsqueeze(0).to(device)  # (1, P_valid + T)
    with torch.no_grad():
        out = model(input_ids=ids)
    logits = (out.logits if hasattr(out, "logits") else out)[0].float()  # (P_valid + T, vocab)
    logits = logits[len(prompt) - 1 : len(prompt) - 1 + len(response_ids)]  # (T, vocab)
    logp = torch.log_softmax(logits, dim=-1)
    # exp(-inf) * -inf is nan: masked-out vocabulary entries contribute 0.
    return -torch.nan_to_num(logp.exp() * logp, nan=0.0).sum(-1).cpu()  # (T,)


def token_values(batch, row: int, color_by: str = "logprob", *, entropy: Optional[torch.Tensor] = None,
                 model: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """(T,) float values of `color_by` for every response column of `row` (padding included).

    logprob: `rollout_logprobs` (else `old_logprobs`); advantage: `advantages`;
    logprob_gap: `rollout_logprobs - old_logprobs` (the rollout engine vs the trainer);
    is_weight: `exp(old_logprobs - rollout_logprobs)`, the importance weight pi_old / pi_rollout before
    `algo.rollout_is_cap` truncates it;
    entropy: `entropy` ((B, T) or (T,)) when given, else computed with `model`.
    """
    if color_by not in COLOR_BY:
        raise ValueError(f"token_view_html: color_by must be one of {COLOR_BY}, got {color_by!r}")
    if not -len(batch) <= row < len(batch):
        raise IndexError(f"token_view_html: row {row} out of range for a batch of {len(batch)} rows")
    if color_by == "logprob":
        if batch.rollout_logprobs is None and batch.old_logprobs is None:
            raise ValueError(
                "token_view_html(color_by='logprob') needs Batch.rollout_logprobs or Batch.old_logprobs; "
                f"neither is set (set fields: {', '.join(batch.present_fields())})"
            )
        source = batch.rollout_logprobs if batch.rollout_logprobs is not None else batch.old_logprobs
        return source[row].float().cpu()
    if color_by == "advantage":
        return _need(batch, "advantages", color_by)[row].float().cpu()
    if color_by == "logprob_gap":
        rollout = _need(batch, "rollout_logprobs", color_by)[row].float()
        old = _need(batch, "old_logprobs", color_by)[row].float()
        return (rollout - old).cpu()
    if color_by == "is_weight":
        rollout = _need(batch, "rollout_logprobs", color_by)[row].float()
        old = _need(batch, "old_logprobs", color_by)[row].float()
        return (old - rollout).exp().cpu()
    # entropy: not a Batch field (it needs the whole next-token distribution, not just the sampled token)
    if entropy is not None:
        entropy = torch.as_tensor(entropy)
        return (entropy[row] if entropy.ndim == 2 else entropy).float().cpu()
    if model is not None:
        return response_entropy(model, batch, row)
    raise ValueError(
        "token_view_html(color_by='entropy') needs per-token entropies, which a Batch does not store: "
        "pass entropy=<(B, T) tensor> or model=<the policy> to compute them"
    )


def token_color(value: float, scale: float, color_by: str) -> str:
    """CSS background for one token. Diverging (blue < 0 < red) for advantage and logprob_gap;
    red for unlikely tokens (logprob); orange for uncertain positions (entropy). `scale`: the
    magnitude that gets full colour."""
    if not math.isfinite(value) or scale <= 0:
        return "transparent"
    if color_by == "is_weight":  # diverging around a weight of 1, on the log scale (`scale`: max |log w|)
        value = math.log(value) if value > 0 else -math.inf
        if not math.isfinite(value):
            return "transparent"
    if color_by == "logprob":
        strength, rgb = -value / scale, (220, 50, 47)
    elif color_by == "entropy":
        strength, rgb = value / scale, (245, 130, 20)
    else:
        strength, rgb = abs(value) / scale, ((220, 50, 47) if value > 0 else (38, 110, 200))
    alpha = 0.85 * min(max(0.0, strength), 1.0)  # max(0.0, -0.0) is 0.0, never -0.0
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def _token_strings(tokenizer, ids: list[int]) -> list[str]:
    if tokenizer is None:
        return [f"[{i}]" for i in ids]
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


# Multi-turn rows: environment / tool tokens and step-reward badges (inline styles, so that a
# single-turn view's HTML, and its shared CSS, stay exactly as they were).
_ENV_STYLE = "background:#e4e4e4;color:#666;font-style:italic"
_REWARD_STYLE = ("color:#fff;font-size:75%;font-style:normal;border-radius:6px;padding:0 4px;margin:0 2px;"
                 "background:")  # + green (reward >= 0) or red
ENV_LEGEND = "environment / tool tokens (not trained)"


def _reward_badge(reward: float, turn: int) -> str:
    tip = f"reward {reward:.4g} of the environment step that answered policy turn {turn}"
    colour = "#2e7d32" if reward >= 0 else "#c62828"
    return f'<span class="reward" title="{html.escape(tip)}" style="{_REWARD_STYLE}{colour}">r={reward:.4g}</span>'


def token_view_html(batch, tokenizer, row: int = 0, color_by: str = "logprob", *,
                    entropy: Optional[torch.Tensor] = None, model: Optional[torch.nn.Module] = None) -> str:
    """HTML of row `row`: its prompt (grey), then every real response token on a colour scale of
    `color_by` (see `token_values`), with token, id and value in a tooltip. `tokenizer` decodes
    each token on its own (None: show ids).

    Multi-turn rows (`Batch.loss_mask` set): environment / tool tokens (`loss_mask` 0) are drawn
    grey and italic (`class="tok env"`), with no value: the policy did not sample them, and the colour
    scale and the min/mean/max are over the policy's tokens only. Every nonzero `Batch.turn_rewards`
    entry gets a badge `r=...` after its token (the last token of the policy turn the step answered)."""
    values = token_values(batch, row, color_by, entropy=entropy, model=model)  # (T,)
    ids = _need(batch, "response_ids", color_by)[row]
    mask = _valid_mask(batch, row).cpu()  # (T,)
    if values.shape[0] != ids.shape[0]:
        raise ValueError(
            f"token_view_html: {color_by} has {values.shape[0]} columns but Batch.response_ids has "
            f"{ids.shape[0]}"
        )
    valid_ids = ids.cpu()[mask].tolist()
    valid_values = values[mask]
    multi_turn = batch.loss_mask is not None
    # (N,) over the valid tokens: True where the environment wrote the token, not the policy.
    is_env = (batch.loss_mask[row].cpu()[mask] == 0) if multi_turn else torch.zeros(len(valid_ids), dtype=torch.bool)
    rewards = batch.turn_rewards[row].float().cpu()[mask].tolist() if batch.turn_rewards is not None else None
    sampled = valid_values[~is_env]  # the scale and stats describe the policy's own tokens
    finite = sampled[torch.isfinite(sampled)]
    magnitude = finite.clamp(min=1e-30).log() if color_by == "is_weight" else finite  # weights: around 1
    scale = float(magnitude.abs().max()) if finite.numel() else 0.0
    pieces, turn, previous_env = [], 0, True
    for k, (token, token_id, value) in enumerate(zip(_token_strings(tokenizer, valid_ids), valid_ids,
                                                     valid_values.tolist())):
        env = bool(is_env[k])
        turn += int(previous_env and not env)  # a policy turn starts after the prompt or an environment turn
        previous_env = env
        reward = rewards[k] if rewards is not None else 0.0
        if env:
            tip = f"{token!r} id={token_id} environment / tool token: not sampled by the policy, not trained"
            pieces.append(f'<span class="tok env" title="{html.escape(tip)}" style="{_ENV_STYLE}">'
                          f"{html.escape(token)}</span>")
        else:
            tip = f"{token!r} id={token_id} {color_by}={value:.4g}"
            if color_by == "logprob":
                tip += f" p={math.exp(value):.3g}"
            elif color_by == "logprob_gap":
                tip += f" weight pi_old/pi_rollout={math.exp(-value):.4g}"
            if reward != 0:
                tip += f" turn {turn} reward={reward:.4g}"
            pieces.append(
                f'<span class="tok" title="{html.escape(tip)}" '
                f'style="background:{token_color(value, scale, color_by)}">{html.escape(token)}</span>'
            )
        if reward != 0:
            pieces.append(_reward_badge(reward, turn))
    prompt = _text(batch, row, "prompt_text", "prompt_ids", "prompt_mask") or ""
    legend = {
        "logprob": "red = unlikely token (log-prob near the row's minimum)",
        "entropy": "orange = high-entropy position",
        "advantage": "red = positive advantage, blue = negative",
        "logprob_gap": "red = rollout log-prob above trainer's, blue = below",
        "is_weight": "red = weight above 1 (the trainer finds the token likelier), blue = below",
    }[color_by]
    if batch.policy_version is not None:
        legend += f"; drawn by policy version {int(batch.policy_version[row])}"
    stats = (
        f"min {float(finite.min()):.4g}, mean {float(finite.mean()):.4g}, max {float(finite.max()):.4g}"
        if finite.numel() else "no tokens"
    )
    if multi_turn:
        stats = f"policy tokens: {stats}"
    body = "".join(pieces) if pieces else '<i style="color:#999">(empty response)</i>'
    turn_legend = ""
    if multi_turn or rewards is not None:
        turn_legend = (
            f'<div><span style="{_ENV_STYLE}">{html.escape(ENV_LEGEND)}</span> '
            f"({int(is_env.sum())} of {len(valid_ids)} tokens) · "
            f'<span style="{_REWARD_STYLE}#2e7d32">r=…</span> reward of an environment step, after the policy turn it '
            f"answered ({turn} policy turns)</div>"
        )
    return (
        f"{_TABLE_CSS}<div><b>row {row}</b> · colour by <b>{html.escape(color_by)}</b> "
        f"({html.escape(legend)}; {stats}; full colour at |{'log ' * (color_by == 'is_weight')}v| = {scale:.4g})</div>"
        f"{turn_legend}"
        f'<div class="rlkit-tokens"><span style="color:#888;border-right:2px solid #bbb;margin-right:3px">'
        f"{html.escape(prompt)}</span>{body}</div>"
    )
