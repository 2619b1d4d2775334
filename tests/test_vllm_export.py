"""`Session.export` writes a folder vLLM serves as it is (`make test-vllm`; skipped where vLLM does not import).

vLLM loads the exported weights itself here (no weight stream from a trainer): its greedy tokens' log-probs
must equal a transformers forward of the same folder.
"""

from __future__ import annotations

import pytest
import torch

import rlkit


def _vllm_missing() -> str | None:
    from rlkit.rollout.vllm_engine import vllm_import_error

    return vllm_import_error()


VLLM_MISSING = _vllm_missing()


@pytest.mark.vllm
@pytest.mark.skipif(VLLM_MISSING is not None, reason=f"vLLM is not importable here ({VLLM_MISSING}); run `make test-vllm`")
def test_vllm_serves_an_exported_policy(tmp_path):
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    cfg = rlkit.Config.preset(
        "arithmetic-tiny",
        model={"preset": "qwen2-1m"},  # head_dim 32: one vLLM's CPU kernels take (qwen2-tiny's 16 is not)
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4},
        actor={"mini_batch_size": 16, "micro_batch_size": 8, "lr": 3e-3},
        cluster={"backend": "local", "threads_per_worker": 1},
        logging={"run_dir": str(tmp_path), "run_name": "export", "dashboard": False},
    )
    with rlkit.Session(cfg, reward_fn=lambda text, truth, eos: float(text[:1].isdigit())) as s:
        s.train(1)
        folder = s.export(tmp_path / "policy")
        prompt = [int(t) for t, m in zip(s.last_batch.prompt_ids[0], s.last_batch.prompt_mask[0]) if m]

    llm = LLM(model=str(folder), dtype="float32", enforce_eager=True, max_model_len=64, seed=0,
              kv_cache_memory_bytes=1 << 30, generation_config="vllm")
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                          SamplingParams(temperature=0.0, max_tokens=6, logprobs=0, ignore_eos=True))
    tokens = list(out.outputs[0].token_ids)
    vllm_lp = torch.tensor([step[tok].logprob for step, tok in zip(out.outputs[0].logprobs, tokens)])

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    hf_lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
    assert torch.equal(logits.argmax(-1), torch.tensor(tokens))  # vLLM's greedy choice is transformers' too
    assert (vllm_lp - hf_lp).abs().max() < 1e-4


@pytest.mark.vllm
@pytest.mark.skipif(VLLM_MISSING is not None, reason=f"vLLM is not importable here ({VLLM_MISSING}); run `make test-vllm`")
def test_vllm_samples_from_the_merged_lora_policy(tmp_path):
    """A LoRA policy on the vLLM engine: every sync streams W + alpha/r B A under the base names, so vLLM's
    log-probs of its samples equal the trainer's (adapters on) after updates."""
    cfg = rlkit.Config.preset(
        "arithmetic-tiny",
        model={"preset": "qwen2-1m"},
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 6, "engine": "vllm"},
        actor={"mini_batch_size": 16, "micro_batch_size": 8, "lr": 1e-2, "lora_rank": 4},
        cluster={"backend": "local", "threads_per_worker": 1},
        logging={"run_dir": str(tmp_path), "run_name": "lora-vllm", "dashboard": False},
    )
    with rlkit.Session(cfg, reward_fn=lambda text, truth, eos: float(text[:1].isdigit())) as s:
        before = s.roles["actor"].full_state_dict()
        s.train(2)
        after = s.roles["actor"].full_state_dict()
        batch = s.generate()
        old = s.compute_old_logprobs(batch, force=True).old_logprobs
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in after)  # the merged weights moved
    mask = batch.response_mask.bool()
    assert (old - batch.rollout_logprobs)[mask].abs().max() < 1e-4
