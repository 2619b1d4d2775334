"""The sampling loop's KV-cache variants (`rlkit.rollout.decode`, issue 16): each samples the same tokens and
log-probs as a loop without any cache, rows end where they should, the config names bad values, and the
decode benchmark runs its whole path at a tiny size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlkit.data import encode_prompts, load_model_and_tokenizer
from rlkit.rollout.decode import StopStrings, sample_responses
from rlkit.rollout.sampling import SamplingParams, next_tokens
from tests.test_rollout_hf import one_thread  # noqa: F401  (autouse: one torch thread for this module too)

TEXTS = ["1+2=", "37+48=", "5*6+7=", "99-1=", "hello", "7", "12+3=", "4*4="]
CACHES = ("dynamic", "static")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    return model.eval(), tok


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    _, tok = model_and_tokenizer
    return encode_prompts(tok, TEXTS, 16)  # left-padded to the longest: rows start at different columns


@torch.no_grad()
def cacheless_loop(model, ids, mask, params, stop_ids, pad_id, generator):
    """The contract written out without a KV cache: at every step, one full forward over prompt + tokens so
    far for the rows still going (positions `cumsum(mask) - 1`), `next_tokens` on their last logits (the
    same rows in the same order, so the generator is consumed as by the loop under test), a row ends with
    its first stop token (none before `min_new_tokens`). Returns (ids, mask, logprobs), each (b, T_max)."""
    b, budget = ids.shape[0], params.max_new_tokens
    stops = torch.tensor(stop_ids)
    seq, seq_mask = ids.clone(), mask.clone()
    out_ids = torch.full((b, budget), pad_id)
    out_mask = torch.zeros((b, budget), dtype=torch.long)
    out_lp = torch.zeros((b, budget))
    going = list(range(b))
    for t in range(budget):
        rows = torch.tensor(going)
        m = seq_mask[rows]
        logits = model(input_ids=seq[rows], attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0)).logits
        tokens, lp = next_tokens(logits[:, -1], params, generator, banned=stops if t < params.min_new_tokens else None)
        out_ids[rows, t], out_mask[rows, t], out_lp[rows, t] = tokens, 1, lp
        seq = torch.cat([seq, torch.full((b, 1), pad_id)], 1)
        seq_mask = torch.cat([seq_mask, torch.zeros((b, 1), dtype=torch.long)], 1)
        seq[rows, -1], seq_mask[rows, -1] = tokens, 1
        going = [r for r, tok in zip(going, tokens.tolist()) if tok not in stop_ids]
        if not going:
            break
    width = int(out_mask.sum(-1).max())
    return out_ids[:, :width], out_mask[:, :width], out_lp[:, :width]


def sample(model, tok, ids, mask, params, stop_ids, seed, **kwargs):
    generator = torch.Generator().manual_seed(seed) if not params.greedy else None
    return sample_responses(model, ids, mask, params, eos_ids=stop_ids, pad_id=tok.pad_token_id,
                            generator=generator, **kwargs)


STOPS = [3, 4, 5, 6, 7, 8, 9]  # 7 of the tiny model's 103 ids end a row: rows end at different steps
CASES = {
    "sampled": SamplingParams(temperature=1.0, max_new_tokens=12),
    "min_new_tokens": SamplingParams(temperature=1.0, max_new_tokens=12, min_new_tokens=5),
    "top_k_top_p": SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=12),
    "greedy": SamplingParams(temperature=0, max_new_tokens=12),
}


@pytest.mark.parametrize("kv_cache", CACHES)
@pytest.mark.parametrize("case", list(CASES))
def test_every_kv_cache_samples_what_a_loop_without_cache_samples(model_and_tokenizer, prompts, kv_cache, case):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = CASES[case]
    stops = STOPS
    if case == "greedy":  # the token row 0 ends its free greedy run with: the rows reach it at different steps
        stops = [int(sample(model, tok, ids, mask, params, [tok.eos_token_id], 0).ids[0, -1])]
    for seed in range(11, 41):  # the first seed whose draws end rows at 3+ different steps (the case to test)
        ref_ids, ref_mask, ref_lp = cacheless_loop(model, ids, mask, params, stops, tok.pad_token_id,
                                                   torch.Generator().manual_seed(seed) if not params.greedy else None)
        lengths = ref_mask.sum(-1).tolist()
        if len(set(lengths)) >= 3:
            break
    out = sample(model, tok, ids, mask, params, stops, seed, kv_cache=kv_cache)
    assert len(set(lengths)) >= 3, lengths  # the case really has rows ending at different steps
    assert min(lengths) >= max(params.min_new_tokens, 1)
    assert torch.equal(out.mask, ref_mask) and torch.equal(out.ids, ref_ids)
    torch.testing.assert_close(out.logprobs, ref_lp, atol=1e-5, rtol=0)
    assert out.forward_calls == max(lengths)  # 1 prefill + one step per token but the last


def test_static_and_dynamic_agree_on_stop_strings_and_full_length_rows(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    free = sample(model, tok, ids, mask, params, [tok.eos_token_id], 5)
    # A two-character stop string one row produces mid-way (its tokens 3-4): at least that row stops early.
    stop = tok.decode(free.ids[0, 3:5].tolist())
    stops = StopStrings(tok, [stop])
    outs = [sample(model, tok, ids, mask, params, [tok.eos_token_id], 5, stop_strings=stops, kv_cache=c) for c in CACHES]
    dynamic, static = outs
    assert torch.equal(dynamic.ids, static.ids) and torch.equal(dynamic.mask, static.mask)
    torch.testing.assert_close(dynamic.logprobs, static.logprobs, atol=1e-5, rtol=0)
    lengths = dynamic.mask.sum(-1)
    assert int(lengths[0]) == 5 and int(lengths.min()) < 10
    for row, n in zip(dynamic.ids, lengths.tolist()):
        text = tok.decode(row[:n].tolist(), skip_special_tokens=True)
        assert n == 10 or text.endswith(stop) or int(row[n - 1]) == tok.eos_token_id  # stop string, budget or EOS
        assert stop not in tok.decode(row[: n - 1].tolist(), skip_special_tokens=True)  # not ended any later


def test_compile_decode_needs_the_static_cache_and_kv_cache_is_checked(model_and_tokenizer, prompts):
    from rlkit.rollout.hf import HFEngine

    model, tok = model_and_tokenizer
    params = SamplingParams(max_new_tokens=2)
    with pytest.raises(ValueError, match="compile_decode needs kv_cache='static'"):
        sample(model, tok, *prompts, params, [2], 0, compile_decode=True)
    with pytest.raises(ValueError, match=r"kv_cache='paged': must be one of \('dynamic', 'static'\)"):
        sample(model, tok, *prompts, params, [2], 0, kv_cache="paged")
    sharded = SimpleNamespace(module=model, fsdp_modules=[], device=torch.device("cpu"), world_size=1,
                              config=model.config, kind="causal_lm")
    with pytest.raises(ValueError, match="HFEngine: compile_decode needs kv_cache='static'"):
        HFEngine(sharded, tok, compile_decode=True)


def test_the_rollout_config_picks_the_engines_cache_and_validates_it(model_and_tokenizer, prompts):
    from rlkit.batch import Batch
    from rlkit.config import Config, ConfigError
    from rlkit.rollout.hybrid import ENGINE_BUILDERS

    cfg = Config.preset("arithmetic-tiny")
    assert (cfg.rollout.kv_cache, cfg.rollout.compile_decode) == ("dynamic", False)
    cfg.rollout.kv_cache = "paged"
    with pytest.raises(ConfigError, match=r"rollout\.kv_cache = 'paged': must be one of 'dynamic', 'static'"):
        cfg.validate()
    cfg.rollout.kv_cache, cfg.rollout.compile_decode = "dynamic", True
    with pytest.raises(ConfigError, match=r"rollout\.compile_decode = True: needs rollout\.kv_cache = \"static\""):
        cfg.validate()
    cfg.rollout.kv_cache = "static"
    cfg.validate()  # compile_decode with the static cache is a valid pair

    model, tok = model_and_tokenizer
    sharded = SimpleNamespace(model=SimpleNamespace(module=model, fsdp_modules=[], device=torch.device("cpu"),
                                                    world_size=1, config=model.config, kind="causal_lm"), tokenizer=tok)
    engines = {}
    for kv_cache in CACHES:
        cfg.rollout.kv_cache, cfg.rollout.compile_decode = kv_cache, False
        engines[kv_cache] = ENGINE_BUILDERS["hf"](sharded, rank=0, seed=3, rollout=cfg.rollout, keep_unsharded=None,
                                                  audit_memory=False, vllm=None)
        assert engines[kv_cache].kv_cache == kv_cache and not engines[kv_cache].compile_decode
    batch = Batch.from_prompts(*prompts)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, stop_token_ids=STOPS)
    dynamic, static = (engines[c].generate(batch, params) for c in CACHES)
    assert torch.equal(dynamic.response_ids, static.response_ids)
    assert torch.equal(dynamic.response_mask, static.response_mask) and not dynamic.response_mask.all()
    torch.testing.assert_close(dynamic.rollout_logprobs, static.rollout_logprobs, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_static_decode_samples_the_same_tokens(model_and_tokenizer, prompts):
    """torch.compile of the decode step (tens of seconds on a CPU): the same draws, log-probs to rounding."""
    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    eager = sample(model, tok, ids, mask, params, STOPS, 2, kv_cache="static")
    compiled = sample(model, tok, ids, mask, params, STOPS, 2, kv_cache="static", compile_decode=True)
    assert torch.equal(eager.ids, compiled.ids) and torch.equal(eager.mask, compiled.mask)
    torch.testing.assert_close(eager.logprobs, compiled.logprobs, atol=1e-5, rtol=0)


def test_the_benchmarks_previous_loop_is_the_loop_it_replaced(model_and_tokenizer, prompts):
    """The "before" column times the same computation: with the same sampler (multinomial=False), the same
    draws and log-probs as the dynamic loop."""
    from benchmarks.decode_loop import previous_loop
    from rlkit.rollout.sampling import mask_through_first_stop

    model, tok = model_and_tokenizer
    ids, mask = prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=10, min_new_tokens=2)
    before_ids, before_lp = previous_loop(model, ids, mask, params, eos_ids=STOPS, pad_id=tok.pad_token_id,
                                          generator=torch.Generator().manual_seed(4), multinomial=False)
    now = sample(model, tok, ids, mask, params, STOPS, 4)
    valid = mask_through_first_stop(before_ids, STOPS)
    assert not valid.all()
    assert torch.equal(valid[:, : now.mask.shape[1]], now.mask) and int(valid.sum()) == int(now.mask.sum())
    assert torch.equal((before_ids * valid)[:, : now.ids.shape[1]], now.ids * now.mask)
    torch.testing.assert_close((before_lp * valid)[:, : now.ids.shape[1]], now.logprobs, atol=0, rtol=0)


def test_decode_benchmark_runs_every_variant_at_a_tiny_size(tiny_model_dir, tmp_path, capsys):
    import json

    from benchmarks import decode_loop

    out = decode_loop.main(["--models", str(tiny_model_dir), "--batch", "8", "--new-tokens", "3", "--rounds", "1",
                            "--variants", "generate,generate-static,previous,dynamic,static",
                            "--out", str(tmp_path / "rows.json"), "--workdir", str(tmp_path)])
    assert capsys.readouterr().out.count("DECODE_JSON ") == 1
    rows = out["rows"]
    assert [(r["workload"], r["variant"]) for r in rows] == [
        (w, v) for w in ("fixed", "eos") for v in ("generate", "generate-static", "previous", "dynamic", "static")]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["matmul_ms_per_step"] > 0 and r["batch"] == 8
        assert 1 <= r["mean_len"] <= 3
        if r["workload"] == "fixed":
            assert r["mean_len"] == 3  # min_new_tokens = max_new_tokens: every side makes exactly 3 tokens
    assert {r["vs_generate"] for r in rows if r["variant"] == "generate"} == {1.0}
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == rows
