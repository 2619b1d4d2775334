"""Typed run configuration: one dataclass per section, one docstring per field.

    cfg = Config.preset("arithmetic-tiny", algo="ppo", actor={"lr": 1e-4}, rollout__n=8)
    cfg = cfg.override({"actor.lr": 1e-5})          # a new, validated Config
    text = cfg.to_yaml(); assert Config.from_yaml(text) == cfg

The dataclasses of `schema` are the only source of truth: YAML, dicts, presets and the CLI
(`add_config_args` / `config_from_args`) all go through `Config.from_dict`, and every check
lives in `Config.validate()`, which raises `ConfigError` naming the dotted field, the bad
value and what is allowed. Values that other modules own are read from them there (loss
aggregation modes and KL estimators from `rlkit.algos.core`, engine names from
`rlkit.rollout.engine`, algorithm names and their needs from `rlkit.algos.base`).
Derived values (e.g. `rollout_batch_size`) are properties in one marked block of `Config`;
they are never stored or written to YAML.

Configs are plain mutable dataclasses so a notebook can poke at them; whoever consumes a
config that may have been edited by hand (the Session) calls `cfg.validate()` again.

Layout: `schema` (sections, `Config`, validation), `presets` (PRESETS, data only), `io`
(type conversion, dict <-> dataclass, overrides, YAML, `field_docs`), `args` (the command line).
Importing this package does not import torch.
"""

from __future__ import annotations

from rlkit.config.args import add_config_args, config_from_args, config_help, parse_value
from rlkit.config.io import ConfigError, field_docs
from rlkit.config.presets import PRESETS
from rlkit.config.schema import (
    ActorConfig, AlgoConfig, ClusterConfig, Config, CriticConfig, DataConfig, EnvConfig, LoggingConfig,
    ModelConfig, RewardConfig, RolloutConfig,
)

__all__ = [
    "ConfigError", "Config", "ModelConfig", "DataConfig", "RewardConfig", "RolloutConfig", "EnvConfig", "ActorConfig",
    "CriticConfig", "AlgoConfig", "ClusterConfig", "LoggingConfig", "PRESETS", "add_config_args", "config_from_args",
    "config_help", "field_docs",
]
