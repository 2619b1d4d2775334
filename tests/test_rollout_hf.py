"""The hf engine's sampling loop on a plain transformers model: agreement with `generate()`,
EOS / stop handling, the log-prob convention against a full forward, prompt layout."""

from __future__ import annotations

import inspect

import pytest
import torch

from rlkit.data import encode_prompts, load_model_and_tokenizer
from rlkit.rollout.hf import StopStrings, check_left_padded, sample_responses
from rlkit.rollout.sampling import SamplingParams

TEXTS = ["1+2=", "37+48=", "5*6+7=", "99-1=", "hello", "7"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    _, tok = model_and_tokenizer
    return encode_prompts(tok, TEXTS, 16)


def run(model, tok, ids, mask, params, eos=None, generator=None, stop_strings=None):
    return sample_responses(
        model, ids, mask, params, eos_ids=[tok.eos_token_id] if eos is None else eos, pad_id=tok.pad_token_id,
        generator=generator, stop_strings=stop_strings,
    )


def full_forward_logprobs(model, ids, mask, response_ids, response_mask, temperature):
    """The trainer's recomputation, written out: one forward over prompt + response, no cache."""
    seq = torch.cat([ids, response_ids], 1)
    seq_mask = torch.cat([mask, response_mask], 1)
    positions = (seq_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=seq_mask, position_ids=positions).logits
    logits = logits[:, ids.shape[1] - 1 : -1] / temperature  # (B, T, V): position t-1 predicts token t
    lp = torch.log_softmax(logits.float(), -1).gather(-1, response_ids[..., None]).squeeze(-1)
    return lp * response_mask


def test_greedy_equals_transformers_generate(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    ours = run(model, tok, ids, mask, SamplingParams(temperature=0, max_new_tokens=12))
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12)[:, ids.shape[1]:]
    assert ours.ids.shape == (len(TEXTS), 12) and ours.mask.all()  # this random model never says EOS in 12
    assert torch.equal(ours.ids, ref)
    assert ours.forward_calls == 12  # 1 prefill + 11 decode steps: the last token needs no forward


def test_rows_stop_at_their_first_eos_and_nothing_after(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = SamplingParams(temperature=0, max_new_tokens=14)
    free = run(model, tok, ids, mask, params)
    # Declare a token the greedy rows emit at different steps to be EOS.
    eos = int(free.ids[0, -1])
    first = [(row == eos).nonzero() for row in free.ids]
    lengths = [int(f[0]) + 1 if len(f) else 14 for f in first]
    assert len(set(lengths)) >= 3 and 14 in lengths  # rows end at different steps, some never

    out = run(model, tok, ids, mask, params, eos=[eos])
    assert out.mask.sum(-1).tolist() == lengths
    assert out.ids.shape[1] == max(lengths) <= params.max_new_tokens
    for i, n in enumerate(lengths):
        assert torch.equal(out.ids[i, :n], free.ids[i, :n])  # dropping finished rows changes no other row
        assert (out.ids[i, n:] == tok.pad_token_id).all() and (out.logprobs[i, n:] == 0).all()
        assert out.mask[i, :n].all() and not out.mask[i, n:].any()
        torch.testing.assert_close(out.logprobs[i, :n], free.logprobs[i, :n], rtol=0, atol=1e-5)
    # stop_token_ids in the params act like EOS
    via_params = run(model, tok, ids, mask, params.replace(stop_token_ids=[eos]))
    assert torch.equal(via_params.mask, out.mask)


def test_max_new_tokens_is_respected_and_all_stopped_batches_end_early(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    out = run(model, tok, ids, mask, SamplingParams(temperature=0, max_new_tokens=3))
    assert out.ids.shape == (len(TEXTS), 3) and out.mask.all()
    # every row's first greedy token is a stop token: one prefill, no decode step
    first = run(model, tok, ids, mask, SamplingParams(temperature=0, max_new_tokens=1)).ids[:, 0]
    out = run(model, tok, ids, mask, SamplingParams(temperature=0, max_new_tokens=50), eos=first.unique().tolist())
    assert out.ids.shape == (len(TEXTS), 1) and out.forward_calls == 1


def test_min_new_tokens_keeps_rows_going_past_their_eos(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    free = run(model, tok, ids, mask, params, generator=torch.Generator().manual_seed(0))
    eos = free.ids[:, 1].unique().tolist()  # every row's second token is a stop token: all end by step 2
    assert run(model, tok, ids, mask, params, generator=torch.Generator().manual_seed(0), eos=eos).ids.shape[1] <= 2
    forced = run(model, tok, ids, mask, params.replace(min_new_tokens=6), generator=torch.Generator().manual_seed(0),
                 eos=eos)
    lengths = forced.mask.sum(-1)
    assert (lengths >= 6).all()
    assert not torch.isin(forced.ids[:, :5], torch.tensor(eos)).any()  # no stop token among the first 5
    # only the draw is restricted: the reported log-probs are the full distribution's, as the trainer computes
    ref = full_forward_logprobs(model, ids, mask, forced.ids, forced.mask, temperature=1.0)
    torch.testing.assert_close(forced.logprobs, ref, rtol=0, atol=1e-5)
    exact = run(model, tok, ids, mask, params.replace(min_new_tokens=10), generator=torch.Generator().manual_seed(0),
                eos=eos)
    assert exact.ids.shape == (len(TEXTS), 10) and exact.mask.all()  # every response exactly max_new_tokens long


def test_sampled_logprobs_equal_a_full_forward_at_the_temperature(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.95, max_new_tokens=10)
    free = run(model, tok, ids, mask, params, generator=torch.Generator().manual_seed(0))
    # The draws repeat until the first row ends, so rows 0 and 1 end by step 3 at the latest.
    eos = free.ids[:2, 2].tolist()
    out = run(model, tok, ids, mask, params, generator=torch.Generator().manual_seed(0), eos=eos)
    assert out.mask.sum() < out.mask.numel()  # some row stopped: padding is exercised
    ref = full_forward_logprobs(model, ids, mask, out.ids, out.mask, temperature=0.7)
    torch.testing.assert_close(out.logprobs, ref, rtol=0, atol=1e-5)
    assert (out.logprobs[out.mask.bool()] < 0).all()


def test_all_padding_prompt_columns_change_nothing(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    wide_ids = torch.cat([torch.full((len(TEXTS), 5), tok.pad_token_id), ids], 1)
    wide_mask = torch.cat([torch.zeros(len(TEXTS), 5, dtype=torch.long), mask], 1)
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    a = run(model, tok, ids, mask, params, generator=torch.Generator().manual_seed(3))
    b = run(model, tok, wide_ids, wide_mask, params, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.ids, b.ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-6)


def first_stop_reference(tok, row: list[int], stops: list[str]) -> int:
    """Brute force: the shortest prefix whose full decoded text contains a stop string."""
    for j in range(len(row)):
        if any(s in tok.decode(row[: j + 1], skip_special_tokens=True) for s in stops):
            return j + 1
    return len(row)


def test_stop_strings_end_a_row_with_the_token_that_completes_them(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = SamplingParams(temperature=0, max_new_tokens=16)
    free = run(model, tok, ids, mask, params)
    texts = tok.batch_decode(free.ids)
    # two-character stops taken from the middle of two rows' texts
    stops = [texts[0][5:7], texts[3][7:9]]
    expected = [first_stop_reference(tok, row, stops) for row in free.ids.tolist()]
    assert min(expected) < 16 and max(expected) == 16

    out = run(model, tok, ids, mask, params.replace(stop=stops), stop_strings=StopStrings(tok, stops))
    assert out.mask.sum(-1).tolist() == expected
    for i, n in enumerate(expected):
        assert torch.equal(out.ids[i, :n], free.ids[i, :n])
        if n < 16:  # the stop string is kept in the response, and it was not complete one token earlier
            assert any(s in tok.decode(out.ids[i, :n].tolist()) for s in stops)
            assert not any(s in tok.decode(out.ids[i, : n - 1].tolist()) for s in stops)


def test_stop_strings_need_a_tokenizer():
    with pytest.raises(ValueError, match="stop needs a tokenizer"):
        StopStrings(None, ["\n"])


def test_right_padded_prompts_are_rejected_naming_the_row():
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="prompt row 1 is not left-padded"):
        check_left_padded(mask, "hf engine")
    check_left_padded(torch.tensor([[0, 0, 1], [1, 1, 1]]), "hf engine")


# ----------------------------------------------------------------------------- the engine's Protocol and sync


def plain_engine(model, tok):
    """An `HFEngine` on a plain one-rank module, standing in for the actor's `ShardedModel`."""
    from types import SimpleNamespace

    from rlkit.rollout.hf import HFEngine

    sharded = SimpleNamespace(module=model, fsdp_modules=[], device=torch.device("cpu"), world_size=1,
                              config=model.config, kind="causal_lm")
    return HFEngine(sharded, tok)


def test_the_hf_engine_is_a_rollout_engine_whose_sync_moves_nothing(model_and_tokenizer, prompts):
    from rlkit.batch import Batch
    from rlkit.rollout.engine import RolloutEngine, SyncReport

    model, tok = model_and_tokenizer
    engine = plain_engine(model, tok)
    assert isinstance(engine, RolloutEngine) and not engine.copies_weights
    assert not engine.stale  # it generates on the trainer's parameters from the start
    report = engine.sync()
    assert isinstance(report, SyncReport)
    assert (report.mode, report.bytes, report.seconds) == ("in-place", 0, 0.0)
    engine.close()  # nothing to free; the engine keeps working
    batch = Batch.from_prompts(*prompts)
    engine.generate(batch, SamplingParams(n=1, max_new_tokens=2, temperature=0))
    assert engine.generate_stats["stale"] == 0.0 and engine.generate_stats["sync_bytes"] == 0.0


def test_a_stale_hf_engine_syncs_first_and_says_so(model_and_tokenizer, prompts):
    from rlkit.batch import Batch

    model, tok = model_and_tokenizer
    engine = plain_engine(model, tok)
    batch = Batch.from_prompts(*prompts)
    params = SamplingParams(n=1, max_new_tokens=2, temperature=0)
    engine.mark_stale()
    assert engine.stale
    engine.generate(batch, params)
    assert engine.generate_stats["stale"] == 1.0 and engine.generate_stats["sync_bytes"] == 0.0
    assert not engine.stale
    engine.generate(batch, params)  # synced by the first call: nothing to report
    assert engine.generate_stats["stale"] == 0.0
    engine.mark_stale()
    engine.sync()  # the explicit step
    engine.generate(batch, params)
    assert engine.generate_stats["stale"] == 0.0


def test_sampling_passes_the_kv_cache_by_the_argument_this_transformers_names(model_and_tokenizer, prompts):
    """transformers 5.20+ renamed `past_key_values` to `cache` (the old name warns on every forward and goes
    in 5.40); older releases (the vLLM environment's) only know `past_key_values`."""
    import warnings

    from rlkit.rollout.hf import cache_argument

    model, tok = model_and_tokenizer
    expected = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert cache_argument(model) == expected

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
            raise AssertionError("not called")

    assert cache_argument(OldStyle()) == "past_key_values"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run(model, tok, prompts[0], prompts[1], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert out.ids.shape[0] == len(TEXTS) and out.forward_calls > 1  # the cache was used past the prompt
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_sampling_builds_no_autograd_graph(model_and_tokenizer, prompts):
    """Generation runs without grad: an autograd graph over every decode step cost GBs on a real model."""
    model, tok = model_and_tokenizer
    ids, mask = prompts
    assert torch.is_grad_enabled()
    out = run(model, tok, ids, mask, SamplingParams(max_new_tokens=3, temperature=1.0))
    assert not out.logprobs.requires_grad and out.logprobs.grad_fn is None
