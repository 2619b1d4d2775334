"""Reading W&B runs back: offline run folders (no network) and online runs (`entity/project/run_id`).

An offline run is one `run-<id>.wandb` file: a log of protobuf `Record`s in
wandb's framing (a 7-byte header `:W&B` + magic 0xBEE1 + version 0, then
LevelDB-style 32 KiB blocks of chunks `crc32c u32 | length u16 | type u8 |
payload`, type 1 = a whole record, 2/3/4 = first/middle/last piece of one).

Two readers of that file, which give the same result (a test checks it):
- `records`: the framing above decoded here, each payload parsed with
  `wandb.proto.wandb_internal_pb2.Record`. In-process, ~1 ms a run: the default.
- `leet`: `wandb leet inspect --json FILE` (wandb >= 0.31 ships it; prints one
  json object per record), wandb's own reader in a ~2 s subprocess: the fallback
  when a future wandb changes the framing or the protobuf schema.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)  # ident, magic, version
_BLOCK = 32768
_CHUNK_HEADER = 7  # crc32c (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
INTERNAL_KEYS = ("_step", "_runtime", "_timestamp", "_wandb")


@dataclass
class WandbRun:
    """What `rlkit.compare` needs from a W&B run."""

    name: str
    """Display name (falls back to the run id)."""
    run_id: str
    """W&B run id."""
    project: str
    """W&B project ('' when unknown)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run config, nested, without wandb's own `_wandb` entry."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One flat dict per logged step, in order; `_step` holds the W&B step."""


# ------------------------------------------------------------ locate


def find_wandb_file(path: str | os.PathLike) -> Path:
    """The `run-*.wandb` file of `path`: that file, a run folder (`offline-run-*`), or a folder holding
    exactly one run under `wandb/` (e.g. an rlkit run directory logged with wandb=True)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".wandb":
            raise ValueError(f"{path} is not a W&B run file (expected run-<id>.wandb)")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no such W&B run file or folder: {path}")
    for pattern in ("run-*.wandb", "*-run-*/run-*.wandb", "wandb/*-run-*/run-*.wandb"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(f.parent.name) for f in found[:5])
            raise ValueError(f"{path} holds {len(found)} W&B runs ({names} ...): pass one run folder")
    raise FileNotFoundError(f"{path} holds no W&B run (no run-*.wandb file in it, in */ or in wandb/*/)")


# ------------------------------------------------------------ records reader


def iter_record_payloads(path: str | os.PathLike) -> Iterator[bytes]:
    """The serialized `Record`s of a .wandb file, in order (checksums are not verified)."""
    data = Path(path).read_bytes()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path} is not a W&B transaction log (bad header {data[:7]!r})")
    pos, pending = len(_HEADER), b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # zero-filled rest of a block (a preallocated or cut file)
            pos += left
            continue
        payload = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if len(payload) < length:  # a run still writing, or killed mid-chunk
            return
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")


def _items_to_dict(items) -> dict[str, Any]:
    # A ConfigItem/HistoryItem names its key by `key`, or by `nested_key` parts (W&B joins them with ".").
    return {(item.key or ".".join(item.nested_key)): json.loads(item.value_json) for item in items}


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The run/config/history records of the file in leet's json shape (see `_read_leet`)."""
    from wandb.proto import wandb_internal_pb2

    out = []
    for payload in iter_record_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.append({"type": "run", "run": {
                "run_id": run.run_id, "project": run.project, "display_name": run.display_name,
                "config": {"update": _items_to_dict(run.config.update)}}})
        elif kind == "config":
            out.append({"type": "config", "config": {
                "update": _items_to_dict(record.config.update),
                "remove": [item.key or ".".join(item.nested_key) for item in record.config.remove]}})
        elif kind == "history":
            out.append({"type": "history", "history": {
                "item": _items_to_dict(record.history.item), "step": {"num": record.history.step.num}}})
    return out


def has_exit_record(path: str | os.PathLike) -> bool:
    """True once the run's log holds its `exit` record (so every record before it is on disk too)."""
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    for payload in iter_record_payloads(path):
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False


def _read_leet(path: Path, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every record of the file as printed by `wandb leet inspect --json` (one json object per line)."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_ERROR_REPORTING="false")  # no telemetry upload
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"`wandb leet inspect --json {path}` failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


# ------------------------------------------------------------ assemble


def _set_nested(target: dict, dotted: str, value: Any) -> None:
    """target["b"]["c"] = value for "b.c" (W&B joins nested keys with "."); flat when a level is no dict."""
    *parents, last = dotted.split(".")
    node = target
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            target[dotted] = value
            return
        node = child
    node[last] = value


_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _number(value: Any) -> Any:
    # leet prints non-finite floats as the strings "NaN" / "Infinity" (JSON has no literal for them).
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def _assemble(records: list[dict[str, Any]], path: Path) -> WandbRun:
    run_id = path.stem.removeprefix("run-")
    name, project, config = run_id, "", {}
    history: list[dict[str, Any]] = []
    for record in records:
        kind = record.get("type")
        if kind == "run":
            run = record["run"]
            run_id = run.get("run_id") or run_id
            name = run.get("display_name") or run_id
            project = run.get("project", "")
            for key, value in run.get("config", {}).get("update", {}).items():
                _set_nested(config, key, value)
        elif kind == "config":
            for key, value in record["config"].get("update", {}).items():
                _set_nested(config, key, value)
            for key in record["config"].get("remove", []) or []:
                config.pop(key, None)
        elif kind == "history":
            item = {k: _number(v) for k, v in record["history"].get("item", {}).items()}
            item.setdefault("_step", record["history"].get("step", {}).get("num", len(history)))
            history.append(item)
    config.pop("_wandb", None)
    return WandbRun(name=name, run_id=run_id, project=project, config=config, history=history)


def read_offline_run(path: str | os.PathLike, reader: str = "auto") -> WandbRun:
    """Config and history of a local W&B run (an `offline-run-*` folder, its .wandb file, or a folder
    holding one run under `wandb/`). `reader`: "records", "leet", or "auto": records (in-process, ~1 ms),
    falling back to leet (a ~2 s subprocess) when the file does not decode or holds no run record."""
    if reader not in ("auto", "leet", "records"):
        raise ValueError(f"read_offline_run: reader must be 'auto', 'leet' or 'records', got {reader!r}")
    file = find_wandb_file(path)
    if reader == "leet":
        return _assemble(_read_leet(file), file)
    try:
        records = _read_records(file)
    except Exception as err:  # a newer wandb whose framing or protobuf schema this reader does not know
        if reader == "records":
            raise
        records, failure = [], err
    else:
        failure = None
    if reader == "auto" and not any(r["type"] == "run" for r in records):
        try:
            return _assemble(_read_leet(file), file)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the W&B run {file}: the record reader found no run "
                             f"({failure or 'no run record'}) and `wandb leet inspect` failed: {err}") from err
    return _assemble(records, file)


def read_online_run(run_path: str, api: Optional[Any] = None) -> WandbRun:
    """Config and full history of an online run `entity/project/run_id` (needs network and a W&B login)."""
    if api is None:
        from rlkit.monitor.wandb_log import import_wandb

        api = import_wandb().Api()
    run = api.run(run_path)
    history = [dict(row) for row in run.scan_history()]  # every row, not a sample
    config = {k: v for k, v in dict(run.config).items() if not k.startswith("_wandb")}
    return WandbRun(name=run.name or run.id, run_id=run.id, project=run.project, config=config,
                    history=history)
