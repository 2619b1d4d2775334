"""The command line: `rlkit train [CONFIG.yaml] [--preset NAME] [--algo NAME] [--set KEY=VALUE ...]`.

`add_config_args` adds the arguments to a parser, `config_from_args` turns the parsed arguments into a
validated `Config` (preset, then YAML file, then --algo, then each --set), `parse_value` reads one --set
value guided by the field's type, and `config_help` lists every key with its type, default and docstring.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

import yaml

from rlkit.config.io import (
    ConfigError, _field_type, _hints, _is_section, _is_union, _Loader, _load_yaml, _type_name, field_docs,
)
from rlkit.config.presets import PRESETS
from rlkit.config.schema import Config

__all__ = ["add_config_args", "config_from_args", "parse_value", "config_help"]


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the config arguments to `parser` (dests: config_path, preset, algo, overrides)."""
    g = parser.add_argument_group("configuration (later ones win: preset, then CONFIG.yaml, then --algo, then --set)")
    g.add_argument("config_path", nargs="?", metavar="CONFIG.yaml", default=None,
                   help="YAML config; with --preset its keys override the preset's")
    g.add_argument("--preset", default=None, choices=list(PRESETS), help="start from a named preset")
    g.add_argument("--algo", default=None, help="algorithm name (sets algo.name)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set actor.lr=1e-5 --set rollout.stop='[\"\\n\"]' "
                        "(values are YAML scalars; see rlkit.config.config_help() for every key)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config described by the arguments of `add_config_args`."""
    cfg = Config.preset(args.preset) if getattr(args, "preset", None) else Config()
    if getattr(args, "config_path", None):
        d, where = _load_yaml(Path(args.config_path))
        try:
            cfg = cfg.override(d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if getattr(args, "algo", None):
        cfg = cfg.override(algo=args.algo)
    return cfg.override(overrides_from_args(args))


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `--set KEY=VALUE` arguments as {dotted key: parsed value}."""
    sets = {}
    for item in getattr(args, "overrides", None) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set actor.lr=1e-5")
        sets[key.strip()] = parse_value(key.strip(), raw)
    return sets


def parse_value(key: str, raw: str) -> Any:
    """Parse a command-line value for `key` as a YAML scalar, guided by the field's type: a field that takes
    strings keeps the raw text unless it reads as null ("null", "~", "None") and the field is optional."""
    tp = _field_type(Config, key)
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        value = raw
    args = typing.get_args(tp) if _is_union(tp) else (tp,)
    if type(None) in args and raw.strip() in ("null", "~", "None", "none", ""):
        return None
    if (str in args or _is_section(tp)) and not isinstance(value, (str, dict)):
        return raw  # e.g. run_name=123 or algo=1e5 stay text; the type check decides whether that is allowed
    return value


def config_help() -> str:
    """Every dotted key with its type, default and docstring (for `--help`-style listings)."""
    d, lines = Config().to_dict(), []
    for name, tp in _hints(Config).items():
        fields = [(name, tp, d[name], field_docs(Config)[name])] if not _is_section(tp) else [
            (f"{name}.{f}", t, d[name][f], field_docs(tp)[f]) for f, t in _hints(tp).items()]
        for key, t, default, doc in fields:
            lines.append(f"{key} ({_type_name(t)}, default {default!r}): {doc}")
    return "\n".join(lines)
