"""Rollout correction (`rlkit.algos.rollout_correction`): hand-computed weights, masks and metrics, the policy
loss they change (and, switched off, leave bit for bit as it was), the config checks, and one step of a tiny
Session that reports the mismatch metrics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import rlkit
from rlkit.algos import core
from rlkit.algos import rollout_correction as rc
from rlkit.algos.base import AlgorithmSpec, register_algorithm
from rlkit.algos.losses import PolicyLoss
from rlkit.batch import Batch
from rlkit.config import ConfigError

# One row with two valid tokens and one padding token. log pi_old - log pi_rollout = [0.5, -1.0] on the valid
# tokens; the padding holds a gap of 5 nats that must never show up anywhere.
OLD = torch.tensor([[-1.0, -2.0, 0.0]])
ROLLOUT = torch.tensor([[-1.5, -1.0, -5.0]])
MASK = torch.tensor([[1, 1, 0]])


def tiny_config(tmp_path, **overrides):
    base = dict(
        logging={"run_dir": str(tmp_path), "run_name": "run", "dashboard": False},
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4},
        actor={"mini_batch_size": 16, "micro_batch_size": 8},
        critic={"micro_batch_size": 8},
        cluster={"backend": "local", "threads_per_worker": 1},
    )
    base.update(overrides)
    return rlkit.Config.preset("arithmetic-tiny", **base)


# --- the pure functions, by hand ---------------------------------------------------------------------------


def test_log_ratio_is_old_minus_rollout_and_zero_on_padding():
    assert torch.equal(rc.rollout_log_ratio(OLD, ROLLOUT, MASK), torch.tensor([[0.5, -1.0, 0.0]]))
    # a huge gap is clamped (exp() of it stays finite)
    assert rc.rollout_log_ratio(torch.tensor([[0.0]]), torch.tensor([[-100.0]]), torch.tensor([[1]])).item() == 20.0


def test_token_weights_are_the_ratio_truncated_at_the_cap():
    lr = rc.rollout_log_ratio(OLD, ROLLOUT, MASK)
    w = rc.truncated_is_weights(lr, MASK, "token", cap=1.5)
    # exp(0.5) = 1.6487 > 1.5 -> 1.5; exp(-1) = 0.3679 stays; padding 0
    assert torch.allclose(w, torch.tensor([[1.5, math.exp(-1.0), 0.0]]))
    assert not w.requires_grad


def test_sequence_weights_are_the_product_of_the_token_ratios_on_every_token():
    lr = rc.rollout_log_ratio(OLD, ROLLOUT, MASK)
    # exp(0.5 - 1.0) = exp(-0.5) = 0.6065 on both valid tokens
    want = torch.tensor([[0.60653066, 0.60653066, 0.0]])
    assert torch.allclose(rc.truncated_is_weights(lr, MASK, "sequence", cap=2.0), want)
    # ... capped at 0.5
    assert torch.allclose(rc.truncated_is_weights(lr, MASK, "sequence", cap=0.5), torch.tensor([[0.5, 0.5, 0.0]]))
    # a long row whose product is exp(60): the cap, not inf
    big = torch.full((1, 3), 20.0)
    assert torch.equal(rc.truncated_is_weights(big, torch.ones(1, 3), "sequence", cap=2.0), torch.full((1, 3), 2.0))


def test_band_mask_keeps_the_ratios_inside_the_band():
    lr = rc.rollout_log_ratio(OLD, ROLLOUT, MASK)
    # token ratios 1.65 (in [0.5, 2]) and 0.37 (out); padding is never kept
    assert torch.equal(rc.band_keep_mask(lr, MASK, "token", 0.5, 2.0), torch.tensor([[1.0, 0.0, 0.0]]))
    # the row's product exp(-0.5) = 0.61 is inside: the whole row is kept
    assert torch.equal(rc.band_keep_mask(lr, MASK, "sequence", 0.5, 2.0), torch.tensor([[1.0, 1.0, 0.0]]))
    # a row of two tokens at exp(-0.5) each: product exp(-1) = 0.37 leaves the band, geometric mean 0.61 stays
    two = torch.tensor([[-0.5, -0.5]])
    ones = torch.ones(1, 2)
    assert torch.equal(rc.band_keep_mask(two, ones, "sequence", 0.5, 2.0), torch.zeros(1, 2))
    assert torch.equal(rc.band_keep_mask(two, ones, "geometric", 0.5, 2.0), torch.ones(1, 2))
    # low = 0: no lower edge
    assert torch.equal(rc.band_keep_mask(lr, MASK, "token", 0.0, 2.0), torch.tensor([[1.0, 1.0, 0.0]]))


def test_mismatch_metrics_by_hand():
    # valid tokens: pi_old = [0.5, 0.2], pi_rollout = [0.25, 0.4]; padding: pi_old = 1, pi_rollout = e^-5
    old = torch.log(torch.tensor([[0.5, 0.2, 1.0]]))
    rollout = torch.log(torch.tensor([[0.25, 0.4, math.exp(-5.0)]]))
    m = {k: float(v) for k, v in rc.mismatch_metrics(old, rollout, MASK).items()}
    # ratios pi_old / pi_rollout = [2, 0.5]
    assert m["rollout_corr/ratio_mean"] == pytest.approx(1.25)
    assert m["rollout_corr/ratio_max"] == pytest.approx(2.0)
    # k1 = log pi_rollout - log pi_old = [-ln 2, ln 2] -> mean 0
    assert m["rollout_corr/kl_k1"] == pytest.approx(0.0, abs=1e-7)
    # k3 = (r - 1) - ln r = [1 - ln 2, -0.5 + ln 2] -> mean 0.25
    assert m["rollout_corr/kl"] == pytest.approx(0.25)
    # |pi_old - pi_rollout| = [0.25, 0.2]
    assert m["training/rollout_probs_diff_mean"] == pytest.approx(0.225)
    assert m["training/rollout_probs_diff_max"] == pytest.approx(0.25)


def test_correction_weights_combine_the_truncated_ratio_and_the_band():
    both = rc.RolloutCorrection(is_level="token", is_cap=1.5, mask_level="token", mask_low=0.5, mask_high=2.0)
    # [1.5, 0.37] * [1, 0]
    w = both.loss_weights(OLD, ROLLOUT, MASK)
    assert torch.allclose(w, torch.tensor([[1.5, 0.0, 0.0]]))
    stats = both.weight_stats(w, MASK)
    assert float(stats["is_weight_mean"]) == pytest.approx(0.75) and float(stats["masked_frac"]) == 0.5
    # band only: the weight is the keep mask
    band = rc.RolloutCorrection(mask_level="token")
    assert torch.equal(band.loss_weights(OLD, ROLLOUT, MASK), torch.tensor([[1.0, 0.0, 0.0]]))


def test_batch_metrics_need_both_log_probs():
    batch = Batch(old_logprobs=OLD, rollout_logprobs=ROLLOUT, response_mask=MASK, batch_size=[1])
    m = rc.batch_metrics(batch, rc.RolloutCorrection(mask_level="token"))
    assert m["rollout_corr/masked_frac"] == 0.5 and m["rollout_corr/is_weight_mean"] == 0.5
    assert m["rollout_corr/ratio_max"] == pytest.approx(math.exp(0.5))
    assert "rollout_corr/masked_frac" not in rc.batch_metrics(batch)  # no correction: the mismatch only
    assert rc.batch_metrics(batch.replace(old_logprobs=None)) == {}  # actor.skip_old_logprobs: nothing to compare


# --- the policy loss -----------------------------------------------------------------------------------------


def loss_inputs(seed=0, b=3, t=5):
    """Random (b, t) inputs with ragged masks: outputs with grad, and the micro-batch."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 2
    logprobs = (old + 0.3 * torch.randn(b, t, generator=g)).requires_grad_(True)
    entropy = torch.rand(b, t, generator=g).requires_grad_(True)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    mb = Batch(response_mask=mask, advantages=torch.randn(b, t, generator=g) * mask,
               old_logprobs=old, rollout_logprobs=old + 0.4 * torch.randn(b, t, generator=g),
               ref_logprobs=old + 0.1 * torch.randn(b, t, generator=g), batch_size=[b])
    return logprobs, entropy, mb


def run_loss(loss_fn, logprobs, entropy, mb):
    logprobs.grad = entropy.grad = None
    n_tok, n_seq = float(mb.response_mask.sum()), float((mb.response_mask.sum(-1) > 0).sum())
    loss, metrics = loss_fn({"logprobs": logprobs, "entropy": entropy}, mb, n_tok, n_seq)
    loss.backward()
    no_grad = torch.zeros_like(entropy)  # the entropy gets none when no term reads it
    return loss.detach(), logprobs.grad.clone(), no_grad if entropy.grad is None else entropy.grad.clone(), metrics


@pytest.mark.parametrize("agg", core.AGG_MODES)
def test_correction_off_is_the_plain_surrogate_bit_for_bit(agg):
    """PolicyLoss without a correction computes what it computed before the option existed: the surrogate, the
    KL term and the entropy bonus, assembled here as the code did (torch.equal on the loss and both grads)."""
    logprobs, entropy, mb = loss_inputs()
    n_tok, n_seq = float(mb.response_mask.sum()), float((mb.response_mask.sum(-1) > 0).sum())
    counts = dict(norm_length=5, global_tokens=n_tok, global_seqs=n_seq)
    plain = PolicyLoss(agg=agg, norm_length=5, dual_clip=3.0, kl_coef=0.1, entropy_coef=0.01)
    assert plain.correction is None
    got = run_loss(plain, logprobs, entropy, mb)
    logprobs.grad = entropy.grad = None
    want, _ = core.ppo_policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.response_mask, clip_low=0.2,
                                   clip_high=0.2, dual_clip=3.0, agg=agg, **counts)
    want = want + 0.1 * core.kl_loss(logprobs, mb.ref_logprobs, mb.response_mask, "k3", agg=agg, **counts)[0]
    want = want + 0.01 * core.entropy_loss(entropy, mb.response_mask, agg=agg, **counts)[0]
    want.backward()
    assert torch.equal(got[0], want.detach())
    assert torch.equal(got[1], logprobs.grad) and torch.equal(got[2], entropy.grad)
    assert not any(k.startswith("rollout_") for k in got[3])
    # ... and a correction whose weights are all exactly 1 (rollout == old, a cap above 1) changes nothing either
    same = dataclasses.replace(plain, correction=rc.RolloutCorrection(is_level="token", is_cap=10.0))
    again = run_loss(same, logprobs, entropy, mb.replace(rollout_logprobs=mb.old_logprobs))
    assert all(torch.equal(a, b) for a, b in zip(got[:3], again[:3]))


def test_the_default_config_builds_the_loss_without_a_correction(tmp_path):
    cfg = tiny_config(tmp_path)
    assert PolicyLoss.from_config(cfg).correction is None
    assert dataclasses.replace(PolicyLoss.from_config(cfg), correction=None) == PolicyLoss.from_config(cfg)
    on = PolicyLoss.from_config(tiny_config(tmp_path, algo={"rollout_is": "sequence", "rollout_is_cap": 3.0}))
    assert on.correction == rc.RolloutCorrection(is_level="sequence", is_cap=3.0)


def one_row(logprobs, old, rollout, adv):
    """A micro-batch of one row of two valid tokens (no padding), and its outputs with grad."""
    lp = torch.tensor([logprobs], requires_grad=True)
    mb = Batch(response_mask=torch.ones(1, 2, dtype=torch.long), advantages=torch.tensor([adv]),
               old_logprobs=torch.tensor([old]), rollout_logprobs=torch.tensor([rollout]), batch_size=[1])
    return lp, torch.zeros(1, 2, requires_grad=True), mb


# pi_old - pi_rollout = [0.5, -1.0] (ratios 1.65 and 0.37); pi_theta - pi_old = [0.1, -0.1] (r = 1.105, 0.905:
# inside the clip range 0.2, so the surrogate is -A r and d/dlogp = -A r); A = [1, -1]; token-mean over 2 tokens:
# d loss / d logp_t = -w_t A_t r_t / 2.
R = [math.exp(0.1), math.exp(-0.1)]
HAND = {
    # w = [min(1.65, 1.5), 0.37] = [1.5, e^-1]
    rc.RolloutCorrection(is_level="token", is_cap=1.5): [1.5, math.exp(-1.0)],
    # w = exp(0.5 - 1.0) on both tokens
    rc.RolloutCorrection(is_level="sequence", is_cap=2.0): [math.exp(-0.5)] * 2,
    # the band [0.5, 2] keeps token 0 (1.65), drops token 1 (0.37); the dropped token still counts in the /2
    rc.RolloutCorrection(mask_level="token"): [1.0, 0.0],
    # the row's product exp(-0.5) = 0.61 is inside the band: both kept
    rc.RolloutCorrection(mask_level="sequence"): [1.0, 1.0],
    # band [0.7, 2]: the product 0.61 leaves it, so the whole row is dropped
    rc.RolloutCorrection(mask_level="sequence", mask_low=0.7): [0.0, 0.0],
}


@pytest.mark.parametrize("correction", list(HAND), ids=lambda c: f"{c.is_level}-{c.mask_level}-{c.mask_low}")
def test_weights_change_the_gradient_as_computed_by_hand(correction):
    lp, ent, mb = one_row([-0.9, -2.1], old=[-1.0, -2.0], rollout=[-1.5, -1.0], adv=[1.0, -1.0])
    loss, grad, _, metrics = run_loss(PolicyLoss(kl_coef=0.0, correction=correction), lp, ent, mb)
    w, adv = HAND[correction], [1.0, -1.0]
    want = torch.tensor([[-w[t] * adv[t] * R[t] / 2 for t in range(2)]])
    assert torch.allclose(grad, want, atol=1e-6)
    assert float(loss) == pytest.approx(sum(-w[t] * adv[t] * R[t] / 2 for t in range(2)), abs=1e-6)
    assert float(metrics["rollout_is_weight_mean"]) == pytest.approx(sum(w) / 2, abs=1e-6)
    if correction.mask_level is not None:
        assert float(metrics["rollout_masked_frac"]) == w.count(0.0) / 2
        assert all(g == 0 for g, keep in zip(grad[0].tolist(), w) if keep == 0)  # masked: no gradient at all


@pytest.mark.parametrize("surrogate, dual_clip", [("ppo", None), ("ppo", 1.05), ("gspo", None)])
def test_weighting_the_advantages_is_weighting_each_tokens_loss(surrogate, dual_clip):
    """The identity the loss relies on: for detached w >= 0, the surrogate with w A is w times the per-token
    surrogate with A, clipped and dual-clipped tokens included; compared with the per-token loss written out."""
    logprobs, entropy, mb = loss_inputs(seed=1)
    correction = rc.RolloutCorrection(is_level="token", is_cap=1.1, mask_level="token", mask_low=0.6)
    clip = (0.2, 0.2) if surrogate == "ppo" else (3e-4, 4e-4)
    agg = "token-mean" if surrogate == "ppo" else "seq-mean-token-mean"
    loss_fn = PolicyLoss(surrogate=surrogate, clip_low=clip[0], clip_high=clip[1], dual_clip=dual_clip, agg=agg,
                         kl_coef=0.0, correction=correction)
    got_loss, got_grad, _, _ = run_loss(loss_fn, logprobs, entropy, mb)
    logprobs.grad = None
    mask = mb.response_mask
    w = correction.loss_weights(mb.old_logprobs, mb.rollout_logprobs, mask)
    assert (w == 0).any() and (w == 1.1).any()  # both the band and the cap act on these inputs
    if surrogate == "ppo":
        ratio = torch.exp(logprobs - mb.old_logprobs)  # (b, T)
    else:  # GSPO-token: the row's geometric-mean ratio as value, each token's own log-prob for the gradient
        seq = core.masked_sum(logprobs - mb.old_logprobs, mask, dim=-1) / mask.sum(-1)
        ratio = torch.exp(seq.detach()[:, None] + logprobs - logprobs.detach())
    a = mb.advantages
    per_token = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip[0], 1 + clip[1]))
    assert (per_token > -a * ratio).any()  # some tokens are clipped
    if dual_clip is not None:
        bound = -a * dual_clip
        hit = (a < 0) & (per_token > bound)
        assert (hit & (w > 0)).any()  # and some tokens that keep a weight are dual-clipped
        per_token = torch.where(hit, bound, per_token)
    want = core.aggregate(w * per_token, mask, agg)
    want.backward()
    assert torch.allclose(got_loss, want.detach(), atol=1e-6)
    assert torch.allclose(got_grad, logprobs.grad, atol=1e-6)


def test_a_micro_batch_without_rollout_logprobs_is_an_error_naming_the_option():
    logprobs, entropy, mb = loss_inputs()
    with pytest.raises(ValueError, match="algo.rollout_is / algo.rollout_mask need Batch.rollout_logprobs"):
        run_loss(PolicyLoss(correction=rc.RolloutCorrection(is_level="token")), logprobs, entropy,
                 mb.replace(rollout_logprobs=None))


def test_skipped_old_logprobs_take_the_current_policy_as_proximal():
    """Under actor.skip_old_logprobs the loss's pi_old is its own detached log-probs: the weights compare them
    with the rollout's (the single on-policy step of decoupled PPO)."""
    lp, ent, mb = one_row([-1.0, -2.0], old=[-1.0, -2.0], rollout=[-1.5, -1.0], adv=[1.0, 1.0])
    loss_fn = PolicyLoss(kl_coef=0.0, correction=rc.RolloutCorrection(is_level="token", is_cap=1.5))
    with_old = run_loss(loss_fn, lp, ent, mb)
    without = run_loss(loss_fn, lp, ent, mb.replace(old_logprobs=None))
    assert torch.equal(with_old[1], without[1])
    assert torch.allclose(without[1], torch.tensor([[-1.5 / 2, -math.exp(-1.0) / 2]]))  # r = 1: -w A / 2


# --- the config ----------------------------------------------------------------------------------------------

BAD = [
    ({"rollout_is": "seq"}, "algo.rollout_is", "seq", "must be one of 'token', 'sequence'"),
    ({"rollout_is_cap": 0.0}, "algo.rollout_is_cap", 0.0, "must be > 0"),
    ({"rollout_mask": "row"}, "algo.rollout_mask", "row", "must be one of 'token', 'sequence', 'geometric'"),
    ({"rollout_mask_low": 1.5}, "algo.rollout_mask_low", 1.5, "must be in [0, 1]"),
    ({"rollout_mask_low": -0.1}, "algo.rollout_mask_low", -0.1, "must be in [0, 1]"),
    ({"rollout_mask_high": 0.9}, "algo.rollout_mask_high", 0.9, "must be >= 1"),
]


@pytest.mark.parametrize("algo, key, value, rule", BAD, ids=[f"{b[1]}={b[2]!r}" for b in BAD])
def test_bad_values_name_the_field(tmp_path, algo, key, value, rule):
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, algo=algo)
    assert any(line.startswith(f"{key} = {value!r}:") and rule in line for line in str(e.value).splitlines()), e.value


def test_the_boundary_values_pass(tmp_path):
    cfg = tiny_config(tmp_path, algo={"rollout_is": "token", "rollout_is_cap": 1e-3, "rollout_mask": "geometric",
                                      "rollout_mask_low": 0.0, "rollout_mask_high": 1.0})
    assert cfg.algo.rollout_mask_high == 1.0
    assert tiny_config(tmp_path, algo={"rollout_mask_low": 1.0}).algo.rollout_mask is None


@pytest.mark.parametrize("name", ["ppo", "grpo", "dr_grpo", "dapo", "gspo", "remax", "rloo", "reinforce_pp",
                                  "safe_rlhf"])
def test_every_builtin_algorithm_applies_the_correction_and_ships_rollout_logprobs(tmp_path, name):
    from rlkit.algos.base import get_algorithm

    cfg = tiny_config(tmp_path, algo={"name": name, "rollout_is": "token", "rollout_mask": "token"})
    algo = get_algorithm(name, cfg)
    assert algo.actor_loss.correction == rc.RolloutCorrection(is_level="token", mask_level="token")
    assert "rollout_logprobs" in algo.spec.learn_fields
    assert "rollout_logprobs" not in get_algorithm(name, tiny_config(tmp_path, algo=name)).spec.learn_fields


@dataclasses.dataclass
class OwnLoss:
    """A registered algorithm whose actor loss ignores the config (built by hand, or not a PolicyLoss)."""

    cfg: object
    name: str = "own_loss"
    spec: AlgorithmSpec = AlgorithmSpec(group_relative=True)
    actor_loss: object = dataclasses.field(default_factory=lambda: PolicyLoss(kl_coef=0.0))

    def prepare(self, s, batch):
        return batch


def plain_function_loss(outputs, mb, global_tokens, global_seqs):
    return outputs["logprobs"].sum(), {}


def test_an_algorithm_whose_loss_ignores_the_correction_is_a_config_error(tmp_path):
    register_algorithm("own_loss", OwnLoss)
    register_algorithm("own_function_loss", lambda cfg: OwnLoss(cfg, actor_loss=plain_function_loss))
    tiny_config(tmp_path, algo="own_loss")  # nothing asked: fine
    with pytest.raises(ConfigError, match=r"algo.rollout_is = 'token': the actor loss of algo.name = 'own_loss' "
                                          r"\(PolicyLoss\) does not apply the rollout correction"):
        tiny_config(tmp_path, algo={"name": "own_loss", "rollout_is": "token"})
    with pytest.raises(ConfigError, match=r"algo.rollout_mask = 'sequence': .*\(function\) does not apply"):
        tiny_config(tmp_path, algo={"name": "own_function_loss", "rollout_mask": "sequence"})


# --- one step of a Session ------------------------------------------------------------------------------------


def test_a_session_step_reports_the_mismatch_and_the_weights(tmp_path):
    """hf engine, fp32, CPU: the rollout's log-probs are the trainer's to ~1e-5, so KL ~ 0 and ratios ~ 1. The
    mismatch comes from the monitor's prepare stats (any algorithm), the weights from the loss."""
    cfg = tiny_config(tmp_path, algo={"rollout_is": "token", "rollout_mask": "token"})
    with rlkit.Session(cfg) as s:
        stats = s.step()
    for key in ("rollout_corr/kl", "rollout_corr/kl_k1", "training/rollout_probs_diff_mean"):
        assert abs(stats[key]) < 1e-4, (key, stats[key])
    for key in ("rollout_corr/ratio_mean", "rollout_corr/ratio_max", "actor/rollout_is_weight_mean"):
        assert stats[key] == pytest.approx(1.0, abs=1e-3), (key, stats[key])
    assert stats["training/rollout_probs_diff_max"] < 1e-3
    assert stats["actor/rollout_masked_frac"] == 0.0  # the weights are the loss's (every micro-batch)
