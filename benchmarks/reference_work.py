"""The benchmark reference work (issue 8), built once and handed to every side.

Reference work, exactly as the issue states it:
- model: Qwen2 config, hidden 128, 4 layers, 4 heads, FFN 512, tied embeddings, the
  103-token character tokenizer of `rlkit.data`, fp32, seed 0 (1,064,448 parameters:
  the `qwen2-1m` preset). Second size: hidden 256, 4 layers, FFN 2560, same vocabulary
  (8,944,640 parameters: `qwen2-9m`);
- task: "a+b=" with a, b drawn uniformly from 0..99, reward 1.0 when the completion
  starts with the right sum;
- step: 8 prompts x 8 samples, up to 16 new tokens, temperature 1.0, GRPO with a KL
  term (beta 0.04) to a reference model, one update per step, AdamW lr 1e-4,
  10 measured steps after one warm-up step.

Both sides load the SAME saved folder (model + tokenizer) and read the SAME prompt
list, so any difference in time is the framework's. Every side script prints one line
`BENCH_JSON {...}` that the harness parses (`emit`), with per-step measurements under
`steps` (see `StepRecord` for the keys).
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

# Model sizes of the issue -> tiny presets of rlkit.data (hidden/layers/heads/FFN are checked in `check_model_shape`).
SIZES: dict[str, str] = {"1m": "qwen2-1m", "9m": "qwen2-9m"}
# The exact shapes, so a change to the rlkit presets cannot silently change the benchmark.
EXPECTED_SHAPES: dict[str, dict[str, int]] = {
    "1m": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
    "9m": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 2560},
}
JSON_MARKER = "BENCH_JSON "
DEFAULT_WORKDIR = Path(os.environ.get("RLKIT_BENCH_DIR", "/tmp/rlkit-bench"))


@dataclass(frozen=True)
class ReferenceWork:
    """One benchmark workload (the defaults are the issue's reference work)."""

    size: str = "1m"
    """Model size: "1m" (qwen2-1m) or "9m" (qwen2-9m)."""
    prompts_per_step: int = 8
    """Prompts per RL step."""
    samples_per_prompt: int = 8
    """Samples per prompt (the GRPO group size)."""
    max_new_tokens: int = 16
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature."""
    beta: float = 0.04
    """Weight of the KL term to the reference model."""
    lr: float = 1e-4
    """AdamW learning rate."""
    steps: int = 10
    """Measured RL steps."""
    warmup_steps: int = 1
    """Steps run first and not measured (allocator, lazy init, first-call overheads)."""
    seed: int = 0
    """Seed of the model initialisation, the prompt draw and the samplers."""
    fixed_length: bool = False
    """Every completion exactly `max_new_tokens` long: EOS cannot be drawn before (rlkit
    `rollout.min_new_tokens`, TRL `generation_kwargs={"min_new_tokens": ...}`), so both sides generate
    the same number of tokens. Off: completions end at EOS ("up to" 16 tokens), and the two samplers'
    different draws give slightly different token counts (reported per side)."""

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"ReferenceWork.size must be one of {sorted(SIZES)}, got {self.size!r}")
        for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReferenceWork.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"ReferenceWork.warmup_steps must be >= 0, got {self.warmup_steps}")

    @property
    def batch_size(self) -> int:
        """Samples per step: prompts_per_step * samples_per_prompt."""
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def total_steps(self) -> int:
        """Warm-up plus measured steps."""
        return self.warmup_steps + self.steps

    @property
    def num_prompts(self) -> int:
        """Prompts the whole run consumes (each step draws new ones)."""
        return self.total_steps * self.prompts_per_step


# ---------------------------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------------------------


def make_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` problems {"prompt": "37+48=", "ground_truth": "85"}, a and b uniform in 0..99 (a seeded draw)."""
    rng = random.Random(f"rlkit-bench|{seed}")
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"{a}+{b}=", "ground_truth": str(a + b)})
    return rows


def starts_with_sum(completion: str, ground_truth: str) -> float:
    """1.0 when the completion text starts with the right sum ("85<|eos|>", "85 ok", "850" all score 1), else 0.0."""
    return 1.0 if completion.startswith(ground_truth) else 0.0


# ---------------------------------------------------------------------------------------------------------------
# The shared folder: model + tokenizer + prompts
# ---------------------------------------------------------------------------------------------------------------


def build_reference(work: ReferenceWork, root: str | os.PathLike = DEFAULT_WORKDIR) -> tuple[Path, Path]:
    """Save the model/tokenizer folder and the prompt file of `work` under `root` (once); returns (model_dir, prompts).

    The model folder depends only on (size, seed) and is reused between runs, so every
    process of a harness invocation loads bit-identical weights. Writes go to a temporary
    name first, so two processes building at once never read a half-written folder.
    """
    from rlkit.data import save_tiny_model

    root = Path(root)
    model_dir = root / f"qwen2-{work.size}-seed{work.seed}"
    if not (model_dir / "config.json").exists():
        tmp = root / f".tmp-{model_dir.name}-{os.getpid()}"
        save_tiny_model(SIZES[work.size], tmp, seed=work.seed)
        try:
            tmp.rename(model_dir)
        except OSError:  # another process won the race: its folder is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    prompts_path = root / f"prompts-{work.num_prompts}-seed{work.seed}.jsonl"
    if not prompts_path.exists():
        tmp = prompts_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(work.num_prompts, work.seed)))
        tmp.replace(prompts_path)
    return model_dir, prompts_path


def read_prompts(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a prompt file written by `build_reference`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def check_model_shape(model, size: str) -> int:
    """Raise if `model` is not the issue's shape for `size`; returns its parameter count (tied weights once)."""
    cfg = model.config
    for key, want in EXPECTED_SHAPES[size].items():
        got = getattr(cfg, key)
        if got != want:
            raise AssertionError(f"reference model {size}: config.{key} = {got}, the issue specifies {want}")
    if not cfg.tie_word_embeddings:
        raise AssertionError(f"reference model {size}: tie_word_embeddings must be True")
    return sum(p.numel() for p in model.parameters())


def check_same_token_ids(model_dir: str | os.PathLike, prompts: list[dict[str, str]]):
    """Load the folder's tokenizer the way TRL does (`AutoTokenizer`) and check it is the char tokenizer.

    For a qwen2 folder `AutoTokenizer` rebuilds a Qwen2 tokenizer from the saved vocabulary
    rather than loading our class; this checks that the rebuilt one gives the same ids for
    every prompt and every answer+EOS, the same special ids and the same vocabulary size.
    Returns the loaded tokenizer (the object to hand to TRL explicitly).
    """
    from transformers import AutoTokenizer

    from rlkit.data import build_char_tokenizer

    ours = build_char_tokenizer()
    loaded = AutoTokenizer.from_pretrained(model_dir)
    if len(loaded) != len(ours):
        raise AssertionError(f"{model_dir}: AutoTokenizer has {len(loaded)} tokens, the char tokenizer {len(ours)}")
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if getattr(loaded, name) != getattr(ours, name):
            got, want = getattr(loaded, name), getattr(ours, name)
            raise AssertionError(f"{model_dir}: AutoTokenizer's {name} {got} != the char tokenizer's {want}")
    texts = [r["prompt"] for r in prompts] + [r["ground_truth"] + ours.eos_token for r in prompts]
    for text in texts:
        a, b = loaded(text)["input_ids"], ours(text)["input_ids"]
        if a != b:
            raise AssertionError(f"{model_dir}: text {text!r} -> AutoTokenizer ids {a}, char tokenizer ids {b}")
    return loaded


# ---------------------------------------------------------------------------------------------------------------
# Measurements shared by the side scripts
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """Measurements of one RL step (seconds; None where a side cannot measure a stage)."""

    step: int
    """0-based index among the measured steps."""
    step_s: float
    """Wall time of the whole step."""
    generate_s: float | None = None
    """Rollout generation (sampling the completions)."""
    ref_s: float | None = None
    """Reference-model log-probs."""
    old_s: float | None = None
    """Log-probs of the behaviour policy before the update (0 when the side skips them: one update per step)."""
    learn_s: float | None = None
    """Policy forward + backward + optimizer step."""
    sync_s: float | None = None
    """Moving updated weights to the rollout engine (0 when generation uses the trained module itself)."""
    prompt_tokens: int = 0
    """Real (unpadded) prompt tokens of the step."""
    gen_tokens: int = 0
    """Generated tokens of the step, up to and including EOS (what tokens/s counts)."""
    gen_tokens_per_s: float | None = None
    """gen_tokens / generate_s."""
    reward_mean: float | None = None
    """Mean reward of the step's samples."""
    extra: dict = field(default_factory=dict)
    """Side-specific measurements (e.g. TRL's whole `_prepare_inputs` time)."""


class PeakRSS:
    """Peak resident memory of this process and of its whole process tree (Ray workers included), sampled.

    The tree peak is sampled every `interval_s` in a daemon thread (RSS of processes
    that share pages is summed, so it over-counts shared libraries: an upper bound).
    """

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.tree_peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-rss")

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tree_peak_bytes = max(self.tree_peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.tree_peak_bytes = max(self.tree_peak_bytes, self._sample())

    @staticmethod
    def self_peak_bytes() -> int:
        """This process's own peak RSS since it started (Linux reports ru_maxrss in KiB)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(side: str, work: ReferenceWork, steps: list[StepRecord], **info) -> dict:
    """Print the one `BENCH_JSON {...}` line the harness reads; returns the record."""
    record = {"side": side, "work": asdict(work), "steps": [asdict(s) for s in steps], **info}
    sys.stdout.write(JSON_MARKER + json.dumps(record) + "\n")
    sys.stdout.flush()
    return record


def parse_record(stdout: str) -> dict:
    """The record of a side's stdout (the last `BENCH_JSON` line); ValueError if there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith(JSON_MARKER)]
    if not lines:
        tail = "\n".join(stdout.splitlines()[-20:])
        raise ValueError(f"no {JSON_MARKER.strip()} line in the output; last lines:\n{tail}")
    return json.loads(lines[-1][len(JSON_MARKER):])


class Stopwatch:
    """`with sw("generate"): ...` accumulates seconds per name until `take()` returns and clears them."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        return _Lap(self, name)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


class _Lap:
    def __init__(self, watch: Stopwatch, name: str):
        self.watch, self.name = watch, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.watch.seconds[self.name] = self.watch.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0
