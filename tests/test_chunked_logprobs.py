"""The chunked log-prob / entropy head (`rlkit.algos.chunked_logits`, `ShardedModel.token_logprobs`).

Every test compares the chunked path with the unchunked one (the whole (b, T, V) logits, then
`logprobs_from_logits` / `entropy_from_logits`): values, gradients w.r.t. every parameter, on a
plain module, on FSDP2 over one rank and over two gloo ranks, in bf16 mixed precision; and what
autograd keeps between forward and backward (no (tokens, V) tensor when chunking).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from transformers import Gemma2Config

from rlkit.algos import chunked_logits
from rlkit.algos.chunked_logits import DEFAULT_CHUNK_SIZE, chunked_logprobs_entropy
from rlkit.algos.core import entropy_from_logits, logprobs_from_logits
from rlkit.batch import Batch
from rlkit.cluster.local import _acquire_dist, _release_dist
from rlkit.config import Config
from rlkit.data.models import tiny_model_config
from rlkit.workers.policy import PolicyWorker, response_logprobs
from rlkit.workers.sharded import ShardedModel

VOCAB = 1000  # a vocabulary far above the hidden size (64), as in real models
ATOL = 1e-5
# Log-probs of a 1000-word vocabulary are about -7; a chunk of another shape runs another GEMM blocking, whose
# float32 rounding reaches ~1.5e-6 relative: so rtol 1e-5 on top of atol 1e-5 wherever a model is involved.
RTOL = 1e-5


@pytest.fixture(scope="module")
def dist_one_rank():
    """A one-rank gloo process group in this process (what the local backend makes)."""
    _acquire_dist(torch.device("cpu"))
    yield
    _release_dist()


def llama_config(vocab: int = VOCAB):
    return tiny_model_config("llama-tiny", vocab)  # hidden 64, 3 layers, tied embeddings


def make_batch(n: int = 6, prompt_len: int = 7, response_len: int = 11, vocab: int = VOCAB, seed: int = 0) -> Batch:
    """Left-padded prompts and right-padded responses of different lengths (row 0 the longest of both)."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.zeros(n, prompt_len, dtype=torch.long)
    prompt_mask = torch.zeros(n, prompt_len, dtype=torch.long)
    response_ids = torch.zeros(n, response_len, dtype=torch.long)
    response_mask = torch.zeros(n, response_len, dtype=torch.long)
    for i in range(n):
        p = prompt_len if i == 0 else int(torch.randint(1, prompt_len + 1, (1,), generator=g))
        r = response_len if i == 0 else int(torch.randint(1, response_len + 1, (1,), generator=g))
        prompt_ids[i, prompt_len - p:] = torch.randint(1, vocab, (p,), generator=g)
        prompt_mask[i, prompt_len - p:] = 1
        response_ids[i, :r] = torch.randint(1, vocab, (r,), generator=g)
        response_mask[i, :r] = 1
    return Batch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                 response_mask=response_mask, batch_size=[n])


def full_grads(model: ShardedModel) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as a full tensor (FSDP2 keeps DTensor shards), then cleared."""
    grads = {}
    for name, p in model.module.named_parameters():
        g = p.grad
        grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        p.grad = None
    return grads


def forward_backward(model: ShardedModel, mb: Batch, *, chunk_size: int, temperature: float = 1.0):
    """(logprobs, entropy, grads) of a loss using both outputs, so both backward terms are exercised."""
    out = response_logprobs(model, mb, temperature=temperature, with_entropy=True, chunk_size=chunk_size)
    weights = torch.linspace(-1.0, 1.0, out["logprobs"].numel()).view_as(out["logprobs"])
    loss = (out["logprobs"] * weights).sum() + 0.3 * out["entropy"].sum()
    loss.backward()
    return out["logprobs"].detach(), out["entropy"].detach(), full_grads(model)


def assert_grads_close(a: dict, b: dict, atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------------------------- the pure function


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 1000])  # 5 and 7 do not divide the 3 * 7 = 21 tokens
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_head_equals_full_logits_and_their_gradients(chunk_size, temperature):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    bias = torch.randn(50, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    w_lp, w_ent = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)

    lp, ent = chunked_logprobs_entropy(hidden, weight, targets, bias=bias, temperature=temperature,
                                       chunk_size=chunk_size)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    chunked = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None

    logits = (hidden @ weight.T + bias) / temperature
    ref_lp, ref_ent = logprobs_from_logits(logits, targets), entropy_from_logits(logits)
    ((ref_lp * w_lp).sum() + (ref_ent * w_ent).sum()).backward()

    assert lp.shape == ent.shape == (3, 7) and lp.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=ATOL)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=ATOL)
    for got, t in zip(chunked, (hidden, weight, bias)):
        torch.testing.assert_close(got, t.grad, rtol=1e-5, atol=ATOL)


def test_chunked_head_gradcheck_and_logprobs_only():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 9, (5,), generator=g)
    both = lambda h, w: torch.stack(chunked_logprobs_entropy(h, w, targets, temperature=0.7, chunk_size=2))
    assert torch.autograd.gradcheck(both, (hidden, weight))
    lp, ent = chunked_logprobs_entropy(hidden, weight, targets, chunk_size=3, with_entropy=False)
    assert ent is None
    assert torch.autograd.gradcheck(lambda h, w: chunked_logprobs_entropy(h, w, targets, chunk_size=3,
                                                                          with_entropy=False)[0], (hidden, weight))
    # by hand: one token, two-word vocabulary, logits (0, log 3): p = (1/4, 3/4)
    log3 = float(torch.tensor(3.0).log())
    lp, ent = chunked_logprobs_entropy(torch.tensor([[1.0]]), torch.tensor([[0.0], [log3]]), torch.tensor([1]))
    p = torch.tensor([0.25, 0.75])
    torch.testing.assert_close(lp, torch.tensor([0.75]).log())
    torch.testing.assert_close(ent, -(p * p.log()).sum().view(1))


@pytest.mark.parametrize("slice_rows", [None, 7], ids=["whole-weight", "vocab-slices"])
def test_chunked_head_bf16_inputs_compute_in_float32(monkeypatch, slice_rows):
    """bf16 hidden states and weight (the FSDP2 mixed-precision case): float32 outputs equal to the float32
    computation on the same bf16 numbers, and gradients equal to its gradients rounded to bf16, also when the
    weight is cast to float32 a few rows at a time (`_SLICE_ELEMENTS`; 7 rows do not divide V = 80)."""
    if slice_rows is not None:
        monkeypatch.setattr(chunked_logits, "_SLICE_ELEMENTS", 32 * slice_rows)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, 32, generator=g).bfloat16().requires_grad_()
    weight = torch.randn(80, 32, generator=g).bfloat16().requires_grad_()
    bias = torch.randn(80, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(0, 80, (2, 6), generator=g)
    w_lp, w_ent = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    lp, ent = chunked_logprobs_entropy(hidden, weight, targets, bias=bias, temperature=0.8, chunk_size=5)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    assert lp.dtype == ent.dtype == torch.float32
    assert hidden.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.bfloat16

    exact = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]  # the same bf16 numbers
    logits32 = (exact[0] @ exact[1].T + exact[2]) / 0.8
    ref_lp, ref_ent = logprobs_from_logits(logits32, targets), entropy_from_logits(logits32)
    ((ref_lp * w_lp).sum() + (ref_ent * w_ent).sum()).backward()
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=ATOL)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=ATOL)
    for got, ref in zip((hidden, weight, bias), exact):  # one bf16 rounding of the float32 gradient
        torch.testing.assert_close(got.grad.float(), ref.grad.bfloat16().float(), rtol=1e-2, atol=1e-4)


def test_vocab_slices_gradcheck(monkeypatch):
    """The sliced path (weight below the compute dtype: here float32 weight, float64 hidden) by gradcheck."""
    monkeypatch.setattr(chunked_logits, "_SLICE_ELEMENTS", 4 * 3)  # slices of 3 rows of a 10-row weight
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(10, 4, generator=g)
    targets = torch.tensor([0, 3, 5, 9, 2])  # targets in every slice, the last one alone in its slice
    assert chunked_logits._vocab_slices(weight, torch.float64) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert torch.autograd.gradcheck(
        lambda h: torch.stack(chunked_logprobs_entropy(h, weight, targets, temperature=0.6, chunk_size=2)), (hidden,))


def test_chunked_head_bad_arguments_name_the_culprit():
    h, w, t = torch.zeros(2, 3, 4), torch.zeros(10, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk_size=0; must be a positive"):
        chunked_logprobs_entropy(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match=r"hidden \(2, 3, 4\) does not match targets \(2, 4\)"):
        chunked_logprobs_entropy(h, w, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"weight \(10, 5\) is not \(V, H\) with H = 4"):
        chunked_logprobs_entropy(h, torch.zeros(10, 5), t)


# ----------------------------------------------------------------------------- on the model


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 13, 512])  # 13 does not divide the 6 * 11 response tokens
@pytest.mark.parametrize("shard", [False, True], ids=["plain", "fsdp"])
def test_policy_logprobs_entropy_and_gradients_equal_the_unchunked_path(dist_one_rank, shard, chunk_size,
                                                                        temperature):
    model = ShardedModel(llama_config(), shard=shard, seed=3)
    mb = make_batch()
    ref = forward_backward(model, mb, chunk_size=0, temperature=temperature)
    got = forward_backward(model, mb, chunk_size=chunk_size, temperature=temperature)
    valid = mb.response_mask.bool()
    for a, b in zip(got[:2], ref[:2]):
        assert a.dtype == torch.float32 and a.shape == mb.response_ids.shape
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        assert (a[~valid] == 0).all() and (a[valid] != 0).all()
    assert_grads_close(got[2], ref[2])
    assert got[2]["model.embed_tokens.weight"].abs().sum() > 0  # the tied head's gradient arrived


def test_no_saved_tensor_holds_all_logits(dist_one_rank):
    """What autograd keeps between forward and backward: with chunking, nothing with a vocabulary dimension
    but the head's own weight (V, H); unchunked, the (b, T, V) logits (or a same-size temporary)."""
    model = ShardedModel(llama_config(), shard=False, seed=0)
    mb = make_batch()
    tokens = int(mb.response_ids.shape[0] * mb.response_ids.shape[1])  # 66 > hidden size 64
    hidden_size = model.hidden_size
    assert tokens > hidden_size  # so a (tokens, V) tensor is larger than the (V, H) weight

    def largest_with_vocab(chunk_size: int) -> int:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            if VOCAB in t.shape:
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = response_logprobs(model, mb, chunk_size=chunk_size)
        (out["logprobs"].sum() + out["entropy"].sum()).backward()
        return max(sizes)

    assert largest_with_vocab(0) >= tokens * VOCAB
    assert largest_with_vocab(8) == VOCAB * hidden_size  # the tied embedding / LM head weight only


def test_bf16_mixed_precision_on_cpu_gives_float32_logprobs_close_to_fp32(dist_one_rank):
    mb = make_batch(seed=4)
    fp32 = ShardedModel(llama_config(), seed=5)
    bf16 = ShardedModel(llama_config(), seed=5, mixed_precision=True)
    assert bf16.sharded and bf16.compute_dtype == torch.bfloat16
    with torch.no_grad():
        exact = response_logprobs(fp32, mb, chunk_size=16)
        chunked = response_logprobs(bf16, mb, chunk_size=16)
        unchunked = response_logprobs(bf16, mb, chunk_size=0)
    valid = mb.response_mask.bool()
    for key in ("logprobs", "entropy"):
        assert chunked[key].dtype == torch.float32
        err_chunked = (chunked[key] - exact[key])[valid].abs()
        err_unchunked = (unchunked[key] - exact[key])[valid].abs()
        assert err_chunked.max() < 0.05, key  # bf16 layers, float32 head
        assert 0 < err_chunked.mean() <= err_unchunked.mean(), key  # the float32 head removes the logit rounding
    # training in bf16: gradients reach the fp32 master weights and match fp32 training's direction
    out = response_logprobs(bf16, mb, chunk_size=16)
    out["logprobs"].sum().backward()
    grad_bf16 = full_grads(bf16)["model.embed_tokens.weight"]
    out = response_logprobs(fp32, mb, chunk_size=16)
    out["logprobs"].sum().backward()
    grad_fp32 = full_grads(fp32)["model.embed_tokens.weight"]
    assert grad_bf16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(grad_bf16.flatten(), grad_fp32.flatten(), dim=0) > 0.99


def test_a_model_that_transforms_its_logits_takes_the_unchunked_path(dist_one_rank):
    config = Gemma2Config(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0)
    model = ShardedModel(config, seed=0)
    assert "final_logit_softcapping = 2.0" in model.chunked_head_unsupported
    mb = make_batch(vocab=200)
    with torch.no_grad():
        default = response_logprobs(model, mb)  # chunk_size on by default: falls back
        unchunked = response_logprobs(model, mb, chunk_size=0)
    torch.testing.assert_close(default["logprobs"], unchunked["logprobs"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="transforms its logits after the LM head.*logits_chunk_size = 0"):
        model.token_logprobs(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3), torch.arange(3)[None],
                             torch.ones(1, 2, dtype=torch.long), chunk_size=4)


def test_chunk_size_config_default_and_bad_values():
    assert Config().actor.logits_chunk_size == DEFAULT_CHUNK_SIZE == 0  # opt-in (see ActorConfig.logits_chunk_size)
    cfg = Config().override(actor__logits_chunk_size=64)
    assert PolicyWorker.kwargs_from_config(cfg)["logits_chunk_size"] == 64
    with pytest.raises(ValueError, match=r"actor: logits_chunk_size=-1 \(actor.logits_chunk_size\) must be"):
        PolicyWorker(None, "unused", logits_chunk_size=-1)  # checked before any model is built


# ----------------------------------------------------------------------------- two FSDP2 ranks (gloo)


def _two_rank_worker(rank: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = ShardedModel(llama_config(), seed=7)
        assert model.sharded
        mb = make_batch(n=4, seed=rank)  # each rank its own rows, as in data parallelism
        results = {c: forward_backward(model, mb, chunk_size=c, temperature=0.8) for c in (0, 5)}
        with torch.no_grad():
            results["no_grad"] = response_logprobs(model, mb, chunk_size=5, temperature=0.8,
                                                  with_entropy=False)["logprobs"]
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_fsdp2_ranks_chunked_equals_unchunked(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_two_rank_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    results = torch.load(out)
    (lp0, ent0, g0), (lp5, ent5, g5) = results[0], results[5]
    torch.testing.assert_close(lp5, lp0, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ent5, ent0, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(results["no_grad"], lp0, rtol=RTOL, atol=ATOL)
    assert_grads_close(g5, g0)  # reduced over both ranks' rows, root (embedding, norm) and layers alike
    assert g5["model.norm.weight"].abs().sum() > 0 and g5["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0
