"""Model sources (`model.path` and the other model fields) fail fast with errors that name the field:
a folder that is not a model, a GGUF file, a missing path, a hub name that is not cached while offline or
while the hub cannot be reached (today's transformers waits ~49 s in retries, then never names the field)."""

from __future__ import annotations

import time

import pytest

import rlkit
from rlkit.data.models import check_model_source
from rlkit.data.stream import resolve_model


def test_a_model_folder_passes_and_home_is_expanded(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_model_dir.parent))
    assert check_model_source(f"~/{tiny_model_dir.name}") == str(tiny_model_dir)


def test_a_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match=r"model.path = .* is a folder without config.json"):
        check_model_source(str(tmp_path))


def test_a_gguf_file_points_to_import_gguf(tmp_path):
    file = tmp_path / "m.Q4_1.gguf"
    file.write_bytes(b"GGUF....")
    with pytest.raises(ValueError, match=r"model.path = .*m.Q4_1.gguf' is a file: import it first with `rlkit import-gguf"):
        check_model_source(str(file))


def test_missing_local_paths_and_non_names_fail_naming_the_field():
    with pytest.raises(FileNotFoundError, match=r"model.critic_path = './nope' does not exist"):
        check_model_source("./nope", "model.critic_path")
    with pytest.raises(FileNotFoundError, match=r"model.path = 'no such model' is neither an existing folder nor a hub name"):
        check_model_source("no such model")


def test_the_smollm2_folder_missing_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"rlkit prepare-smollm2"):
        check_model_source(str(tmp_path / "SmolLM2-135M-Instruct"))


def test_an_uncached_hub_name_offline_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"model.path = 'someone/not-cached-model' is not a local folder and not in "
                                         r"the Hugging Face cache, and HF_HUB_OFFLINE=1"):
        check_model_source("someone/not-cached-model")
    assert time.perf_counter() - start < 5


def test_an_unreachable_hub_fails_with_one_request_naming_the_field(monkeypatch):
    """Online, but the hub does not answer: one attempt, and the error names the field and the cause."""
    import huggingface_hub

    calls = []

    def refuse(self, repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("timeout")))
        raise ConnectionError("Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    with pytest.raises(ValueError, match=r"model.reward_model_path = 'org/rm' is not a local folder, not in the "
                                         r"Hugging Face cache, and the hub could not be reached \(ConnectionError"):
        check_model_source("org/rm", "model.reward_model_path")
    assert calls == [("org/rm", 10)]


def test_the_session_checks_every_model_field_before_building_anything(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = rlkit.Config.preset("arithmetic-tiny", model={"path": str(tiny_model_dir), "reward_model_path": "org/rm"},
                              logging={"run_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="model.reward_model_path = 'org/rm'"):
        resolve_model(cfg, tmp_path)
    assert resolve_model(cfg.override({"model.reward_model_path": None}), tmp_path) == str(tiny_model_dir)
