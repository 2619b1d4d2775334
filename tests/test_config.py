"""rlkit.config: presets, overrides, YAML round trips, validation messages, the CLI helpers."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.config import (
    PRESETS, ActorConfig, AlgoConfig, Config, ConfigError, add_config_args, config_from_args, config_help, field_docs,
)

TINY = "arithmetic-tiny"


def _modified() -> Config:
    """A config that differs from its preset in every kind of field: None, tuple, list with escapes, bool, tiny
    floats, ints and a section name."""
    return Config.preset(TINY, algo="ppo", seed=7).override({
        "model.path": "/models/some model", "model.dtype": "bfloat16", "data.operators": "+-*",
        "rollout.stop": ["\n", "=", "'quote'"], "rollout.top_k": 5, "rollout.temperature": 0.7,
        "actor.lr": 3e-7, "actor.betas": [0.8, 0.95], "actor.lr_schedule": "cosine", "actor.total_steps": 100,
        "actor.warmup_steps": 10, "actor.grad_clip": None, "actor.offload": True, "critic.value_clip": None,
        "algo.dual_clip": 3.0, "algo.kl_target": 0.02, "algo.cost_limit": -0.5,
        "cluster.address": "auto", "logging.run_name": "ppo: run #1", "logging.wandb": True,
    })


# ---- presets -------------------------------------------------------------------------------------------------

def test_preset_list_and_contents():
    assert {TINY, "arithmetic-1m"} <= set(Config.presets())
    assert Config.presets().keys() == PRESETS.keys()
    assert all(desc for desc in Config.presets().values())
    tiny = Config.preset(TINY)
    assert (tiny.model.path, tiny.model.preset, tiny.data.source, tiny.data.digits, tiny.data.operators) == (
        None, "qwen2-tiny", "arithmetic", 2, "+")
    assert (tiny.algo.name, tiny.rollout.prompts_per_step, tiny.rollout.n, tiny.rollout.max_new_tokens) == (
        "grpo", 16, 4, 6)
    assert Config.preset("arithmetic-1m").model.preset == "qwen2-1m"


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'.*arithmetic-tiny.*arithmetic-1m"):
        Config.preset("nope")


def test_defaults_are_valid_and_derived_values():
    cfg = Config()
    cfg.validate()
    tiny = Config.preset(TINY)
    assert tiny.rollout_batch_size == 16 * 4
    assert tiny.num_mini_batches == 64 // 32
    assert tiny.override(actor__ppo_epochs=3).optimizer_steps_per_rl_step == 2 * 3
    assert tiny.override(cluster__nodes=2, cluster__devices_per_node=4).world_size == 8
    # derived values are not fields: they never reach the dict or the YAML
    assert "rollout_batch_size" not in str(tiny.to_dict()) and "rollout_batch_size" not in tiny.to_yaml()


def test_resolved_device_and_dtype():
    import torch

    cuda = torch.cuda.is_available()
    auto = Config.preset(TINY, model__dtype="auto")
    assert auto.resolved_device() == ("cuda" if cuda else "cpu")
    assert auto.resolved_dtype() == (torch.bfloat16 if cuda else torch.float32)
    assert auto.override(cluster__device="cpu").resolved_dtype() == torch.float32
    assert auto.override(model__dtype="bfloat16", cluster__device="cpu").resolved_dtype() == torch.bfloat16


# ---- overrides -----------------------------------------------------------------------------------------------

def test_override_forms_agree_and_merge():
    base = Config.preset(TINY)
    by_kw = Config.preset(TINY, actor__lr=3e-4)
    by_dict = Config.preset(TINY, actor={"lr": 3e-4})
    by_dotted = base.override({"actor.lr": 3e-4})
    by_section = base.override(actor={"lr": 3e-4})
    assert by_kw == by_dict == by_dotted == by_section
    assert by_kw.actor.lr == 3e-4
    # a dict merges: the other actor fields keep the preset's values
    assert dataclasses.replace(by_dict.actor, lr=base.actor.lr) == base.actor
    # a new Config; the original is untouched
    assert base.actor.lr == 1e-5 and by_dotted is not base


def test_string_for_a_section_sets_its_name():
    assert Config.preset(TINY, algo="ppo").algo.name == "ppo"
    assert Config.preset(TINY).override({"algo": "remax"}).algo.name == "remax"
    with pytest.raises(ConfigError, match=r"actor = 'fast': section 'actor' has no name"):
        Config.preset(TINY, actor="fast")


def test_override_normalises_types():
    cfg = Config.preset(TINY, actor__lr=1, actor__betas=[0.5, 0.6])
    assert cfg.actor.lr == 1.0 and type(cfg.actor.lr) is float
    assert cfg.actor.betas == (0.5, 0.6) and isinstance(cfg.actor.betas, tuple)


def test_override_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"actor\.lr is a value, not a section: cannot set 'actor\.lr\.x'"):
        Config.preset(TINY).override({"actor.lr.x": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'actr' \(did you mean 'actor'\?\)"):
        Config.preset(TINY, actr__lr=1.0)


# ---- unknown keys --------------------------------------------------------------------------------------------

def test_unknown_keys_name_the_dotted_key_and_list_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        Config.preset(TINY, actor__lrr=1e-5)
    msg = str(e.value)
    assert "unknown key 'actor.lrr'" in msg and "did you mean 'actor.lr'" in msg
    assert "valid keys of section 'actor': lr, weight_decay, betas" in msg
    with pytest.raises(ConfigError, match=r"unknown key 'trainer'.*valid keys at the top level: model, data"):
        Config.from_dict({"trainer": {"steps": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'rollout\.num_samples'.*valid keys of section 'rollout'"):
        Config.from_yaml("rollout:\n  num_samples: 4\n")


# ---- YAML ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("docs", [False, True])
def test_yaml_round_trip_of_every_preset(name, docs):
    cfg = Config.preset(name)
    assert Config.from_yaml(cfg.to_yaml(docs=docs)) == cfg


@pytest.mark.parametrize("docs", [False, True])
def test_yaml_round_trip_of_a_modified_config_through_a_file(tmp_path, docs):
    cfg = _modified()
    assert cfg != Config.preset(TINY)
    path = tmp_path / "sub" / "run.yaml"
    text = cfg.to_yaml(path, docs=docs)
    assert path.read_text() == text
    back = Config.from_yaml(path)
    assert back == cfg and back.to_yaml(docs=docs) == text
    assert Config.from_yaml(str(path)) == cfg
    assert back.rollout.stop == ["\n", "=", "'quote'"] and back.actor.grad_clip is None
    assert back.to_dict() == cfg.to_dict() and Config.from_dict(cfg.to_dict()) == cfg


def test_yaml_docs_are_comments_of_each_field():
    text = Config().to_yaml(docs=True)
    assert "  # Peak learning rate of the policy (AdamW).\n  lr: 1.0e-06\n" in text


def test_yaml_partial_files_scientific_floats_and_empty_sections():
    cfg = Config.from_yaml("actor:\n  lr: 1e-5\n  ppo_epochs: 2\ncritic:\nseed: 3\n")
    assert cfg.actor.lr == 1e-5 and type(cfg.actor.lr) is float
    assert (cfg.actor.ppo_epochs, cfg.seed, cfg.critic) == (2, 3, Config().critic)
    assert Config.from_yaml("") == Config()


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.yaml"):
        Config.from_yaml(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor:\n  lr: -1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: actor\.lr = -1\.0: must be > 0"):
        Config.from_yaml(bad)
    bad.write_text("actor: [1, 2\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad\.yaml"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        Config.from_yaml("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"actor = 3: expected a mapping"):
        Config.from_yaml("actor: 3\n")


# ---- validation ----------------------------------------------------------------------------------------------

# (override on arithmetic-tiny, field the error must name, value it must show, what it must say)
BAD = [
    ({"actor.lr": -1.0}, "actor.lr", -1.0, "must be > 0"),
    ({"critic.lr": 0.0}, "critic.lr", 0.0, "must be > 0"),
    ({"actor.grad_clip": 0.0}, "actor.grad_clip", 0.0, "must be > 0"),
    ({"actor.weight_decay": -0.1}, "actor.weight_decay", -0.1, "must be >= 0"),
    ({"actor.betas": [0.9, 1.0]}, "actor.betas", (0.9, 1.0), "[0, 1)"),
    ({"actor.ppo_epochs": 0}, "actor.ppo_epochs", 0, "must be >= 1"),
    ({"actor.lr_schedule": "linear"}, "actor.lr_schedule", "linear", "must be one of 'constant', 'cosine'"),
    ({"rollout.temperature": -0.5}, "rollout.temperature", -0.5, "must be >= 0"),
    ({"rollout.n": 0}, "rollout.n", 0, "must be >= 1"),
    ({"rollout.top_p": 0.0}, "rollout.top_p", 0.0, "must be in (0, 1]"),
    ({"rollout.top_p": 1.5}, "rollout.top_p", 1.5, "must be in (0, 1]"),
    ({"rollout.top_k": -1}, "rollout.top_k", -1, "must be >= 0"),
    ({"rollout.engine": "sglang"}, "rollout.engine", "sglang", "must be one of 'hf', 'vllm'"),
    ({"rollout.stop": ["", "="]}, "rollout.stop", ["", "="], "non-empty"),
    ({"rollout.vllm_gpu_memory_utilization": 1.2}, "rollout.vllm_gpu_memory_utilization", 1.2, "(0, 1]"),
    ({"model.dtype": "float64"}, "model.dtype", "float64", "must be one of 'auto', 'float32', 'bfloat16'"),
    ({"model.attn_implementation": "fast"}, "model.attn_implementation", "fast", "must be one of"),
    ({"data.digits": 0}, "data.digits", 0, "must be >= 1"),
    ({"data.operators": "+/"}, "data.operators", "+/", '"+-*"'),
    ({"data.source": " "}, "data.source", " ", "non-empty"),
    ({"algo.name": "GRPO"}, "algo.name", "GRPO", "lower-case"),
    ({"algo.clip_low": 1.0}, "algo.clip_low", 1.0, "must be in [0, 1)"),
    ({"algo.clip_high": -0.1}, "algo.clip_high", -0.1, "must be >= 0"),
    ({"algo.dual_clip": 0.5}, "algo.dual_clip", 0.5, "must be > 1"),
    ({"algo.gamma": 1.5}, "algo.gamma", 1.5, "must be in [0, 1]"),
    ({"algo.loss_agg": "sum"}, "algo.loss_agg", "sum", "'seq-mean-token-sum-norm'"),
    ({"algo.kl_kind": "k4"}, "algo.kl_kind", "k4", "must be one of 'k1', 'k2', 'k3', 'abs'"),
    ({"algo.kl_coef": -0.1}, "algo.kl_coef", -0.1, "must be >= 0"),
    ({"algo.kl_target": 0.0}, "algo.kl_target", 0.0, "must be > 0"),
    ({"cluster.backend": "mpi"}, "cluster.backend", "mpi", "must be one of 'ray', 'local'"),
    ({"cluster.placement": "spread"}, "cluster.placement", "spread", "'colocate', 'split', 'auto'"),
    ({"cluster.device": "tpu"}, "cluster.device", "tpu", "must be one of 'auto', 'cpu', 'cuda'"),
    ({"cluster.devices_per_node": 0}, "cluster.devices_per_node", 0, "must be >= 1"),
    ({"cluster.threads_per_worker": 0}, "cluster.threads_per_worker", 0, "must be >= 1"),
    ({"logging.wandb_mode": "cloud"}, "logging.wandb_mode", "cloud", "'online', 'offline', 'disabled'"),
    ({"logging.log_every": 0}, "logging.log_every", 0, "must be >= 1"),
    # types
    ({"actor.micro_batch_size": 2.5}, "actor.micro_batch_size", 2.5, "expected int, got float"),
    ({"rollout.n": True}, "rollout.n", True, "expected int, got bool"),
    ({"actor.lr": "fast"}, "actor.lr", "fast", "expected float, got str"),
    ({"model.trust_remote_code": "yes"}, "model.trust_remote_code", "yes", "expected bool"),
    ({"model.path": 3}, "model.path", 3, "expected str or null"),
    ({"rollout.stop": "\n"}, "rollout.stop", "\n", "expected list[str]"),
    ({"rollout.stop": ["a", 1]}, "rollout.stop[1]", 1, "expected str"),
    ({"actor.betas": [0.9]}, "actor.betas", [0.9], "expected tuple[float, float]"),
    ({"seed": 1.5}, "seed", 1.5, "expected int"),
    # cross-field
    ({"actor.micro_batch_size": 12, "critic.micro_batch_size": 8}, "actor.mini_batch_size", 32,
     "must be a multiple of actor.micro_batch_size (12)"),
    ({"rollout.prompts_per_step": 12}, "actor.mini_batch_size", 32,
     "must divide the rollout batch rollout.prompts_per_step * rollout.n = 12 * 4 = 48"),
    ({"critic.micro_batch_size": 12}, "critic.micro_batch_size", 12, "must divide actor.mini_batch_size (32)"),
    ({"actor.lr_schedule": "cosine"}, "actor.total_steps", None, 'must be set when actor.lr_schedule = "cosine"'),
    ({"actor.total_steps": 5, "actor.warmup_steps": 6}, "actor.warmup_steps", 6, "must be <= actor.total_steps (5)"),
    ({"rollout.n": 1, "actor.mini_batch_size": 16}, "rollout.n", 1, "must be >= 2 for algo.name = 'grpo'"),
    # the algorithm's checks (rlkit.algos.base.config_problems): its spec, not a table in the config
    ({"algo.name": "dr_grpo", "rollout.n": 1, "actor.mini_batch_size": 16}, "rollout.n", 1,
     "must be >= 2 for algo.name = 'dr_grpo'"),
    ({"algo.name": "safe-rlhf"}, "algo.name", "safe-rlhf", "unknown algorithm (did you mean 'safe_rlhf'?)"),
    ({"algo.name": "trpo"}, "algo.name", "trpo", "available: dapo, dr_grpo, grpo"),
    ({"algo.overlong_buffer": 6}, "algo.overlong_buffer", 6, "must be < rollout.max_new_tokens (6)"),
    ({"rollout.min_new_tokens": 7}, "rollout.min_new_tokens", 7, "must be in 0..rollout.max_new_tokens (6)"),
    ({"cluster.backend": "local", "cluster.devices_per_node": 2}, "cluster.backend", "local", "runs one rank"),
    ({"cluster.backend": "local", "cluster.address": "auto"}, "cluster.address", "auto", "needs cluster.backend"),
]


@pytest.mark.parametrize("overrides, key, value, rule", BAD, ids=[f"{b[1]}={b[2]!r}" for b in BAD])
def test_every_validation_error_names_field_value_and_rule(overrides, key, value, rule):
    with pytest.raises(ConfigError) as e:
        Config.preset(TINY).override(overrides)
    assert isinstance(e.value, ValueError)
    line = next((ln for ln in str(e.value).splitlines() if ln.startswith(f"{key} = {value!r}:")), None)
    assert line is not None, f"no line for {key} = {value!r} in:\n{e.value}"
    assert rule in line


def test_the_good_neighbours_of_bad_values_pass():
    """The limits are where the messages say: each boundary value is accepted."""
    Config.preset(TINY).override({
        "rollout.temperature": 0.0, "rollout.top_p": 1.0, "algo.clip_low": 0.0, "algo.gamma": 0.0,
        "algo.dual_clip": 1.01, "actor.micro_batch_size": 16, "critic.micro_batch_size": 16,
        "actor.lr_schedule": "cosine", "actor.total_steps": 5, "actor.warmup_steps": 5, "algo.overlong_buffer": 5,
        "cluster.backend": "local", "rollout.n": 1, "algo.name": "reinforce_pp", "actor.mini_batch_size": 16,
    })


def test_all_errors_are_reported_at_once_and_validate_catches_later_edits():
    with pytest.raises(ConfigError) as e:
        Config.preset(TINY, actor__lr=-1.0, rollout__top_p=2.0)
    assert "actor.lr = -1.0: must be > 0" in str(e.value) and "rollout.top_p = 2.0" in str(e.value)
    with pytest.raises(ConfigError, match=r"actor\.lr = -1\.0: must be > 0"):
        Config(actor=ActorConfig(lr=-1.0))
    cfg = Config.preset(TINY)
    cfg.actor.micro_batch_size = 7  # a notebook edit: only validate() can see it
    with pytest.raises(ConfigError, match=r"actor\.mini_batch_size = 32: must be a multiple"):
        cfg.validate()


def test_allowed_values_are_the_owners():
    """The choices of algo.loss_agg, algo.kl_kind and rollout.engine are read from the modules that own them."""
    from rlkit.algos import core
    from rlkit.rollout.engine import ENGINE_NAMES

    for key, owner in (("algo.loss_agg", core.AGG_MODES), ("algo.kl_kind", core.KL_KINDS),
                       ("rollout.engine", ENGINE_NAMES)):
        with pytest.raises(ConfigError) as e:
            Config.preset(TINY).override({key: "nope"})
        assert f"{key} = 'nope': must be one of " + ", ".join(repr(v) for v in owner) in str(e.value)
        for value in owner:
            assert Config.preset(TINY).override({key: value})


def test_every_builtin_algorithm_is_a_valid_name():
    from rlkit.algos.base import builtin_algorithms

    names = builtin_algorithms()
    assert {"ppo", "grpo", "dr_grpo", "dapo", "gspo", "remax", "rloo", "reinforce_pp", "safe_rlhf"} <= set(names)
    for name in names:
        assert Config.preset(TINY, algo=name).algo.name == name
        assert f'"{name}"' in field_docs(AlgoConfig)["name"]  # the docs name every built-in one


def test_importing_the_config_does_not_import_torch():
    code = "import sys, rlkit.config; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "False"


# ---- docs and CLI --------------------------------------------------------------------------------------------

def test_every_field_has_a_docstring_and_appears_in_help():
    help_text = config_help()
    sections = [f for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory)]
    assert len(sections) == 10
    for sec in sections:
        docs = field_docs(sec.default_factory)
        assert docs and all(docs.values()), f"undocumented fields in {sec.name}: {docs}"
        for name in docs:
            assert f"\n{sec.name}.{name} (" in "\n" + help_text
    assert all(field_docs(Config).values())


def _cli(argv: list[str]) -> Config:
    parser = add_config_args(argparse.ArgumentParser(prog="rlkit train"))
    return config_from_args(parser.parse_args(argv))


def test_cli_preset_algo_and_sets():
    cfg = _cli(["--preset", TINY, "--algo", "ppo", "--set", "actor.lr=1e-5", "--set", 'rollout.stop=["\\n", "="]',
                "--set", "logging.run_name=123", "--set", "model.path=null", "--set", "actor.betas=[0.5, 0.6]",
                "--set", "critic.value_clip=None", "--set", "actor={ppo_epochs: 2}", "--set", "seed=4"])
    expected = Config.preset(TINY, algo="ppo").override({
        "actor.lr": 1e-5, "rollout.stop": ["\n", "="], "logging.run_name": "123", "actor.betas": (0.5, 0.6),
        "critic.value_clip": None, "actor.ppo_epochs": 2, "seed": 4})
    assert cfg == expected
    assert _cli([]) == Config()
    assert _cli(["--set", "algo=rloo"]).algo.name == "rloo"


def test_cli_yaml_file_over_preset(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("rollout:\n  n: 8\nalgo:\n  name: rloo\n")
    cfg = _cli([str(path), "--preset", TINY, "--set", "rollout.temperature=0.5"])
    assert cfg == Config.preset(TINY, algo="rloo", rollout={"n": 8, "temperature": 0.5})
    # without a preset a full YAML file reproduces the config exactly
    full = tmp_path / "full.yaml"
    _modified().to_yaml(full)
    assert _cli([str(full)]) == _modified()


def test_cli_errors_name_the_key_or_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'actor\.learning_rate'"):
        _cli(["--set", "actor.learning_rate=1e-5"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        _cli(["--set", "actor.lr"])
    with pytest.raises(ConfigError, match=r"actor\.lr = 'abc': expected float"):
        _cli(["--set", "actor.lr=abc"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor:\n  lrr: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'actor\.lrr'"):
        _cli([str(bad)])
    bad.write_text("actor: [1, 2\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad\.yaml"):
        _cli([str(bad)])
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        _cli([str(tmp_path / "nope.yaml")])
