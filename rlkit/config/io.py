"""The machinery under `Config`: type conversion, dict <-> dataclass, dotted overrides, YAML, field docs.

Nothing here knows the sections of `rlkit.config.schema`: every function takes the root dataclass (or an
instance of it), so this module sits below the schema and imports nothing of the package.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


ConfigError.__module__ = "rlkit.config"  # its public home: tracebacks and pickles name rlkit.config.ConfigError


# ---- types -----------------------------------------------------------------------------------------------------

def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp` (int -> float, list <-> tuple), or ConfigError naming `key`. bool is never a number."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        for arm in args:
            try:
                return _convert(value, arm, key)
            except ConfigError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        if origin is list:
            return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        if len(value) == len(args):
            return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    expected = " or ".join(_type_name(a) for a in args) if _is_union(tp) else _type_name(tp)
    raise ConfigError(f"{key} = {value!r}: expected {expected}, got {type(value).__name__}")


def _check_types(cfg: Any, fix: bool) -> None:
    """Check every field of `cfg` (a root config: top-level fields and sections of fields) against its declared
    type; with `fix`, store the converted values (int -> float, list -> tuple). All errors are raised at once."""
    errors = []
    for name, tp in _hints(type(cfg)).items():
        value = getattr(cfg, name)
        if _is_section(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{name} = {value!r}: expected a {tp.__name__}")
            targets = [(value, f"{name}.{f}", getattr(value, f), t, f) for f, t in _hints(tp).items()]
        else:
            targets = [(cfg, name, value, tp, name)]
        for obj, key, v, t, attr in targets:
            try:
                converted = _convert(v, t, key)
            except ConfigError as e:
                errors.append(str(e))
                continue
            if fix:
                setattr(obj, attr, converted)
    if errors:
        raise ConfigError("\n".join(errors))


# ---- dict <-> dataclass ----------------------------------------------------------------------------------------

def _unknown(key: str, valid: list[str], section: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean {(section + '.' if section else '') + close[0]!r}?)" if close else ""
    where = f"of section {section!r}" if section else "at the top level"
    return ConfigError(f"unknown key {key!r}{hint}; valid keys {where}: {', '.join(valid)}")


def _build(cls: type, d: Any, prefix: str) -> Any:
    """An instance of the dataclass `cls` from the nested mapping `d` (or an instance); `prefix` names it in errors."""
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    if d is None and prefix:  # a YAML section whose keys are all commented out
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix or 'config'} = {d!r}: expected a mapping of fields")
    hints = _hints(cls)
    kwargs = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            raise _unknown(key, list(hints), prefix)
        tp = hints[k]
        kwargs[k] = _build(tp, v, key) if _is_section(tp) else _convert(v, tp, key)
    return cls(**kwargs)


def _plain(x: Any) -> Any:
    """Nested dicts / lists of plain YAML types (tuples become lists)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _field_type(root: type, key: str) -> Any:
    """The declared type of a dotted key of `root` (a section class for a section name); ConfigError when unknown."""
    cls, parts = root, key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not _is_section(cls):
            raise ConfigError(f"{prefix} is a value, not a section: cannot set {key!r}")
        if part not in _hints(cls):
            raise _unknown(".".join(parts[: i + 1]), list(_hints(cls)), prefix)
        cls = _hints(cls)[part]
    return cls


def _apply(root: type, d: dict, key: str, value: Any) -> None:
    """Set `key` (dotted) in `d`, the nested dict of a `root`, with the section shorthands of `Config.override`:
    a mapping merges into a section, a string sets the section's `name`, a section instance replaces it."""
    tp = _field_type(root, key)
    parts = key.split(".")
    target = d
    for part in parts[:-1]:
        target = target[part]
    last = parts[-1]
    if not _is_section(tp):
        target[last] = value
    elif isinstance(value, str):
        if "name" not in _hints(tp):
            raise ConfigError(f"{key} = {value!r}: section {key!r} has no name; pass a dict of its fields instead")
        target[last]["name"] = value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _apply(root, d, f"{key}.{k}", v)
    elif isinstance(value, tp):
        target[last] = _plain(dataclasses.asdict(value))
    else:
        raise ConfigError(f"{key} = {value!r}: expected a dict of fields of section {key!r}")


# ---- YAML ------------------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` as a float (YAML 1.1 insists on a dot: `1.0e-5`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _load_yaml(src: str | Path) -> tuple[dict, str]:
    """(top-level mapping, description for errors) of a YAML file or YAML text."""
    where = "YAML text"
    if isinstance(src, Path) or ("\n" not in src and (src.endswith((".yaml", ".yml")) or Path(src).is_file())):
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        src, where = path.read_text(), str(path)
    try:
        d = yaml.load(src, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {where}: {e}") from None
    if d is None:  # an empty file: all defaults
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections, got {type(d).__name__}")
    return d, where


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _to_yaml(cfg: Any, docs: bool) -> str:
    """`cfg` (a root config with `to_dict`) as YAML; `docs` puts each field's docstring above it as a comment."""
    d = cfg.to_dict()
    if not docs:
        return _dump(d)
    root, lines = type(cfg), []
    for name, tp in _hints(root).items():
        lines.append(f"# {field_docs(root)[name]}")
        if not _is_section(tp):
            lines.append(_dump({name: d[name]}).rstrip("\n"))
            continue
        lines.append(f"{name}:")
        for f, doc in field_docs(tp).items():
            lines.append(f"  # {doc}")
            lines.extend("  " + ln for ln in _dump({f: d[name][f]}).rstrip("\n").split("\n"))
    return "\n".join(lines) + "\n"


# ---- field docs ------------------------------------------------------------------------------------------------

@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it in the class source (the single place where fields are documented).

    Reads the source of `cls` wherever it is defined (`inspect.getsource`), so it works for any dataclass
    documented the same way, not only the sections of `rlkit.config.schema`."""
    docs = {f.name: "" for f in dataclasses.fields(cls)}
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (frozen app): fall back to names only
        return docs
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
