"""The four model roles share one `ModelRole`; log-probs are taken at `logprob_temperature`.

Local backend only (one rank, this process), on the session's tiny model.
"""

from __future__ import annotations

import pytest
import torch

from rlkit.batch import Batch
from rlkit.cluster import RoleSpec, WorkerContext, WorkerGroup, register
from rlkit.cluster.protocols import registered_methods
from rlkit.rollout.sampling import SamplingParams, logprob_temperature
from rlkit.workers import role
from rlkit.workers.critic import CriticWorker
from rlkit.workers.policy import PolicyWorker
from rlkit.workers.reference import ReferenceWorker
from rlkit.workers.reward_model import RewardModelWorker
from tests.test_workers import make_batch

MODEL_ROLES = (PolicyWorker, ReferenceWorker, CriticWorker, RewardModelWorker)


def greedy_config():
    from rlkit.config import Config

    cfg = Config.preset("arithmetic-tiny")
    cfg.rollout.temperature = 0.0  # allowed: greedy rollouts
    return cfg


# ----------------------------------------------------------------------------- the temperature rule


def test_logprob_temperature_is_one_for_greedy_and_the_temperature_otherwise():
    assert logprob_temperature(0) == 1.0 and logprob_temperature(0.0) == 1.0
    assert logprob_temperature(0.7) == 0.7 and logprob_temperature(2) == 2.0
    assert isinstance(logprob_temperature(2), float)
    with pytest.raises(ValueError, match="must be >= 0"):
        logprob_temperature(-0.5)
    # SamplingParams follows the same rule (the rollout engines' side)
    assert [SamplingParams(temperature=t).logprob_temperature for t in (0.0, 0.7, 1.3)] == [1.0, 0.7, 1.3]


@pytest.mark.parametrize("cls", [PolicyWorker, ReferenceWorker])
def test_kwargs_from_config_never_hand_a_zero_temperature_to_a_role(cls):
    cfg = greedy_config()
    assert cls.kwargs_from_config(cfg)["temperature"] == 1.0
    cfg.rollout.temperature = 0.7
    assert cls.kwargs_from_config(cfg)["temperature"] == 0.7


@pytest.mark.parametrize("cls", MODEL_ROLES)
def test_model_dtype_reaches_every_role(cls, tiny_model_dir):
    """model.dtype decides mixed precision (it was read by nothing: a bfloat16 config trained in fp32)."""
    from rlkit.config import Config

    for dtype, expected in (("bfloat16", True), ("float32", False), ("auto", None)):
        cfg = Config.preset("arithmetic-tiny", model={"dtype": dtype, "reward_model_path": str(tiny_model_dir)})
        assert cls.kwargs_from_config(cfg)["mixed_precision"] is expected, (cls.__name__, dtype)


def test_a_bfloat16_policy_computes_in_bfloat16_on_cpu(tiny_model_dir):
    from rlkit.config import Config

    batch = make_batch(6, seed=3)
    specs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = Config.preset("arithmetic-tiny", model={"path": str(tiny_model_dir), "dtype": dtype})
        specs[dtype.replace("float", "f")] = RoleSpec(PolicyWorker, kwargs=PolicyWorker.kwargs_from_config(cfg))
    with WorkerGroup(None, specs, backend="local") as group:
        fp32 = group.f32.compute_logprobs(batch).old_logprobs
        bf16 = group.bf16.compute_logprobs(batch).old_logprobs
    valid = batch.response_mask == 1
    gap = (fp32 - bf16)[valid].abs().max()
    assert bf16.dtype == torch.float32 and 1e-4 < gap < 0.5, gap  # bf16 rounding, not another model


def test_reference_at_greedy_rollout_temperature_gives_the_policys_logprobs_at_one(tiny_model_dir):
    batch = make_batch(6, seed=11)
    specs = {
        "actor": RoleSpec(PolicyWorker, kwargs={"model": str(tiny_model_dir), "temperature": 1.0}),
        "ref": RoleSpec(ReferenceWorker, kwargs={"model": str(tiny_model_dir), "temperature": 0.0,
                                                  "micro_batch_size": 4}),
        "ref_hot": RoleSpec(ReferenceWorker, kwargs={"model": str(tiny_model_dir), "temperature": 0.5}),
    }
    with WorkerGroup(None, specs, backend="local") as group:
        ref = group.ref.compute_logprobs(batch).ref_logprobs
        old = group.actor.compute_logprobs(batch).old_logprobs
        hot = group.ref_hot.compute_logprobs(batch).ref_logprobs
    valid = batch.response_mask == 1
    assert torch.isfinite(ref).all() and (ref[valid] < 0).all() and (ref[~valid] == 0).all()
    torch.testing.assert_close(ref, old, rtol=0, atol=1e-6)
    # the temperature does reach the log-probs: at 0.5 they differ (the equality above is not vacuous)
    assert (hot[valid] - ref[valid]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- one component, bound methods


STATE = {"save_checkpoint": "rank0", "load_checkpoint": "rank0", "save_pretrained": "rank0",
         "full_state_dict": "rank0", "pop_stats": "broadcast"}


@pytest.mark.parametrize(
    "cls, own",
    [
        (PolicyWorker, {"compute_logprobs": "split", "update": "split", "optimizer_steps": "rank0"}),
        (ReferenceWorker, {"compute_logprobs": "split"}),
        (CriticWorker, {"compute_values": "split", "update": "split"}),
        (RewardModelWorker, {"score": "split", "update": "split"}),
    ],
)
def test_each_role_exposes_its_own_calls_and_the_shared_state_methods(cls, own):
    assert registered_methods(cls) == {**own, **STATE}
    for name in STATE:
        assert getattr(cls, name) is getattr(role, name), f"{cls.__name__}.{name} is not the shared function"


class Probe:
    """A role written only against `ModelRole`: its forward reports what each micro-batch held."""

    def __init__(self, ctx: WorkerContext, model: str, **options):
        self.core = role.ModelRole(model, kind="causal_lm", name="probe", device=ctx.device, trainable=False,
                                   **options)

    @register("split")
    def rows(self, batch: Batch) -> dict[str, torch.Tensor]:
        def forward(mb: Batch) -> dict[str, torch.Tensor]:
            # (b,) last prompt token of each row, and (b,) the micro-batch's row count (long: infer casts)
            return {"last": mb.prompt_ids[:, -1], "size": torch.full((len(mb),), len(mb))}

        return self.core.infer(batch, "rows", forward)

    @register("split")
    def update(self, batch: Batch) -> dict:
        return self.core.train(batch, lambda *a: None, lambda mb: {})

    pop_stats = role.pop_stats


def test_infer_concatenates_micro_batches_in_order_as_float32_on_cpu(tiny_model_dir):
    batch = make_batch(7, seed=12)
    spec = {"probe": RoleSpec(Probe, kwargs={"model": str(tiny_model_dir), "micro_batch_size": 3})}
    with WorkerGroup(None, spec, backend="local") as group:
        (out,) = group.probe.rows(batch)  # a dict, not a Batch: one per rank
        (stats,) = group.probe.pop_stats()
        with pytest.raises(ValueError, match="probe.rows.*response_mask"):
            group.probe.rows(batch.replace(response_mask=None))
        with pytest.raises(RuntimeError, match="probe.update: this probe model was built with trainable=False"):
            group.probe.update(batch)
    assert out["last"].dtype == torch.float32 and out["last"].device.type == "cpu"
    assert out["last"].tolist() == batch.prompt_ids[:, -1].float().tolist()
    assert out["size"].tolist() == [3, 3, 3, 3, 3, 3, 1]  # 7 rows in micro-batches of 3
    (call,) = stats
    assert call["probe/rows/tokens"] == batch.num_tokens() and call["probe/rows/seconds"] > 0


def test_reward_model_update_refuses_a_micro_batch_that_cuts_a_pair(tiny_model_dir):
    batch = make_batch(4, seed=13).replace(group_id=torch.tensor([0, 0, 1, 1]))
    kwargs = {"model": str(tiny_model_dir), "trainable": True, "micro_batch_size": 3}
    with WorkerGroup(None, {"reward": RoleSpec(RewardModelWorker, kwargs=kwargs)}, backend="local") as group:
        with pytest.raises(ValueError, match=r"micro_batch_size \(3\) must be even"):
            group.reward.update(batch)
        metrics = group.reward.update(batch, micro_batch_size=2)[0]
    assert metrics["reward/optimizer_steps"] == 1 and 0 <= metrics["reward/accuracy"] <= 1


def test_critic_update_names_the_fields_the_default_loss_needs(tiny_model_dir):
    kwargs = {"model": str(tiny_model_dir), "micro_batch_size": 2}
    with WorkerGroup(None, {"critic": RoleSpec(CriticWorker, kwargs=kwargs)}, backend="local") as group:
        with pytest.raises(ValueError, match="critic.update.*values"):
            group.critic.update(make_batch(4).replace(values=None))
        # a custom loss reads only the sequence fields: no values / returns needed
        def loss(outputs, mb, tokens, seqs):
            return (outputs["values"] ** 2).sum() / tokens, {}

        metrics = group.critic.update(make_batch(4).replace(values=None, returns=None), loss)[0]
    assert metrics["critic/loss"] > 0 and metrics["critic/optimizer_steps"] == 1


def test_kwargs_from_config_keep_their_keys():
    cfg = greedy_config()
    cfg.model.reward_model_path = cfg.model.cost_model_path = "/rm"
    model_keys = {"attn_implementation", "seed", "shard_one_rank", "mixed_precision"}
    assert set(PolicyWorker.kwargs_from_config(cfg)) == model_keys | {
        "model", "optim", "mini_batch_size", "micro_batch_size", "epochs", "temperature", "offload",
        "gradient_checkpointing", "tokenizer_path", "logits_chunk_size", "max_tokens_per_micro_batch",
        "pack_sequences", "lora"}
    assert set(ReferenceWorker.kwargs_from_config(cfg)) == model_keys | {
        "model", "micro_batch_size", "temperature", "offload", "tokenizer_path", "logits_chunk_size",
        "max_tokens_per_micro_batch", "pack_sequences"}
    critic = CriticWorker.kwargs_from_config(cfg)
    assert set(critic) == model_keys | {"model", "optim", "mini_batch_size", "micro_batch_size", "epochs",
                                        "value_clip", "offload", "tokenizer_path", "max_tokens_per_micro_batch",
                                        "pack_sequences"}
    assert critic["model"] == "/rm"  # no critic_path: the reward model is the critic's start
    costs = RewardModelWorker.kwargs_from_config(cfg, "costs")
    assert set(costs) == model_keys | {"model", "field", "micro_batch_size", "max_tokens_per_micro_batch"}  # no tokenizer_path: the RM folder brings its own
    assert costs["field"] == "costs"
