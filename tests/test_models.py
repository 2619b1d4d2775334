"""Tiny model presets, save/load round trips through transformers, and the real loading path."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.data.datasets import encode_prompts
from rlkit.data.models import (
    TINY_PRESETS,
    build_tiny_model,
    count_parameters,
    load_model_and_tokenizer,
    save_tiny_model,
)
from rlkit.data.tokenizer import build_char_tokenizer

TEXTS = ["37+48=", "12*3-4=", "Hello, World!\n ~{x}", "<|user|>1+2=<|assistant|>3<|eos|>", "", "a  b"]

# (min, max) parameters with the 103-token char vocabulary: the ranges the preset names promise
PARAM_RANGES = {
    "qwen2-tiny": (150_000, 250_000),
    "llama-tiny": (150_000, 250_000),
    "qwen2-1m": (1_050_000, 1_080_000),
    "llama-1m": (1_040_000, 1_080_000),
    "qwen2-3m": (2_800_000, 3_800_000),
    "qwen2-9m": (8_500_000, 10_000_000),
}


def test_every_preset_has_a_stated_range():
    assert set(PARAM_RANGES) == set(TINY_PRESETS)


@pytest.mark.parametrize("preset", sorted(TINY_PRESETS))
def test_parameter_counts_in_stated_range(preset):
    model = build_tiny_model(preset, vocab_size=103)
    low, high = PARAM_RANGES[preset]
    n = count_parameters(model)
    assert low <= n <= high, f"{preset}: {n:,} parameters"
    assert model.config.model_type == TINY_PRESETS[preset].arch
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied: counted once
    assert next(model.parameters()).dtype == torch.float32


def test_qwen2_1m_reference_count():
    # hidden 128, 4 layers, FFN 512, full MHA with q/k/v biases, tied 103 x 128 embedding:
    # per layer 4*128*128 + 3*128 (attention) + 3*128*512 (SwiGLU) + 2*128 (norms) = 262,784
    expected = 4 * 262_784 + 103 * 128 + 128
    assert count_parameters(build_tiny_model("qwen2-1m", 103)) == expected == 1_064_448


def test_seed_fixes_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model("qwen2-tiny", 103, seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)  # building did not consume the caller's random stream
    b = build_tiny_model("qwen2-tiny", 103, seed=0)
    c = build_tiny_model("qwen2-tiny", 103, seed=1)
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), c.state_dict().values()))
    assert all(torch.equal(x, y) for x, y, _ in pairs)
    assert not all(torch.equal(x, z) for x, _, z in pairs)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown tiny model preset 'qwen9'"):
        build_tiny_model("qwen9", 103)


def _assert_same_tokenizer(loaded, reference):
    assert loaded.get_vocab() == reference.get_vocab()
    assert len(loaded) == len(reference)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(loaded, attr) == getattr(reference, attr), attr
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        assert loaded(text)["input_ids"] == ids, text
        assert loaded.decode(ids) == reference.decode(ids)
    chat = [{"role": "user", "content": "1+2="}]
    assert loaded.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == "<|user|>1+2=<|assistant|>"


@pytest.mark.parametrize("preset", ["qwen2-tiny", "llama-tiny"])
def test_save_and_reload_gives_identical_ids_and_logits(tmp_path, preset):
    """AutoTokenizer on a qwen2 folder rebuilds a Qwen2Tokenizer: it must still be OUR tokenizer, id for id."""
    path = save_tiny_model(preset, tmp_path / preset, seed=7)
    reference_tok = build_char_tokenizer()
    reference_model = build_tiny_model(
        preset, len(reference_tok), seed=7, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )

    tokenizer = AutoTokenizer.from_pretrained(path)
    _assert_same_tokenizer(tokenizer, reference_tok)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.generation_config.eos_token_id == reference_tok.eos_token_id
    assert model.generation_config.pad_token_id == reference_tok.pad_token_id

    ids, mask = encode_prompts(tokenizer, ["37+48=", "1+2=", "Hello!"], max_len=16)
    with torch.no_grad():
        expected = reference_model(input_ids=ids, attention_mask=mask).logits  # (B, P, vocab)
        got = model(input_ids=ids, attention_mask=mask).logits
    assert got.shape == (3, 6, 103)
    assert torch.equal(got, expected)


def test_load_model_and_tokenizer_fixture(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    _assert_same_tokenizer(tokenizer, build_char_tokenizer())
    assert model.config.model_type == "qwen2" and not model.training
    assert count_parameters(model) == count_parameters(build_tiny_model("qwen2-tiny", 103))
    bf16, _ = load_model_and_tokenizer(str(tiny_model_dir), torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="model path .*no-such-model.* does not exist"):
        load_model_and_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="tokenizer path './nope' does not exist"):
        load_model_and_tokenizer(tmp_path, tokenizer_path="./nope")


def test_tokenizer_larger_than_embedding_is_rejected(tmp_path):
    small = build_tiny_model("llama-tiny", vocab_size=50)
    small.save_pretrained(tmp_path)
    build_char_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has 103 tokens but the model .* embeds only 50"):
        load_model_and_tokenizer(tmp_path)


def test_missing_pad_token_falls_back_to_eos(tmp_path):
    path = save_tiny_model("llama-tiny", tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).pad_token_id is None
    _, loaded = load_model_and_tokenizer(path)
    assert loaded.pad_token_id == loaded.eos_token_id == 2


def test_left_padded_generation_matches_unpadded(tiny_model_dir):
    """Left padding (encode_prompts) must not change what the model generates for a prompt."""
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    prompts = ["1+2=", "37+48="]
    ids, mask = encode_prompts(tokenizer, prompts, max_len=16)
    assert mask[0, 0] == 0  # the short prompt really is padded
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
        for i, prompt in enumerate(prompts):
            alone_ids, alone_mask = encode_prompts(tokenizer, [prompt], max_len=16)
            alone = model.generate(input_ids=alone_ids, attention_mask=alone_mask, **kwargs)[:, alone_ids.shape[1] :]
            n = alone.shape[1]
            assert torch.equal(batched[i, :n], alone[0]), prompt
