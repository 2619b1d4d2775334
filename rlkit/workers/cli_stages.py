"""The `rlkit sft` and `rlkit rm` subcommands (registered by `rlkit/cli.py`).

Both take the usual config arguments (`--preset`, a YAML file, `--set key=value`)
plus the stage's own knobs, and print where the result went. Heavy imports happen
when the command runs, so `rlkit --help` stays instant.
"""

from __future__ import annotations

import argparse


def _stage_config(args: argparse.Namespace):
    from rlkit.config import config_from_args

    if args.config_path is None and args.preset is None:
        args.preset = "arithmetic-tiny"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return config_from_args(args)


def _run_sft(args: argparse.Namespace) -> int:
    from rlkit.workers.sft import SFTConfig, run_sft

    cfg = _stage_config(args)
    defaults = SFTConfig()
    sft = SFTConfig(
        steps=args.steps if args.steps is not None else defaults.steps,
        batch_size=args.batch_size if args.batch_size is not None else defaults.batch_size,
        micro_batch_size=args.micro_batch_size if args.micro_batch_size is not None else defaults.micro_batch_size,
        lr=args.lr if args.lr is not None else defaults.lr,
    )
    result = run_sft(cfg, args.out, sft=sft, force=args.force, progress=not args.quiet)
    if result.cached:
        print(f"cached: {result.model_dir} already holds this config's SFT model (exact match {result.exact_match:.1%})")
    else:
        print(f"exact match: {result.exact_match_before:.1%} -> {result.exact_match:.1%}")
    print(f"model: {result.model_dir} (use it as model.path)")
    return 0


def add_sft(sub: argparse._SubParsersAction) -> None:
    from rlkit.config import add_config_args

    p = sub.add_parser(
        "sft",
        help="supervised fine-tuning on the task's reference answers (cached in --out)",
        description="Fine-tune the config's model on prompt -> reference answer pairs (masked NLL), report the "
        "greedy exact match before and after, and export a Hugging Face folder OUT/model. A folder that "
        "already holds the same config's result is reused.",
    )
    add_config_args(p)
    p.add_argument("--out", default="runs/sft", help="output folder (default: runs/sft)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=None, help="rows per optimizer step (all ranks)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="rows per forward/backward on one rank")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--force", action="store_true", help="retrain even if OUT holds this config's result")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_sft)


def _run_rm(args: argparse.Namespace) -> int:
    from rlkit.workers.rm_training import RMConfig, run_rm

    cfg = _stage_config(args)
    defaults = RMConfig()
    rm = RMConfig(
        steps=args.steps if args.steps is not None else defaults.steps,
        pairs_per_step=args.pairs_per_step if args.pairs_per_step is not None else defaults.pairs_per_step,
        lr=args.lr if args.lr is not None else defaults.lr,
        field="costs" if args.cost else "scores",
    )
    result = run_rm(cfg, args.out, rm=rm, force=args.force, progress=not args.quiet)
    kind = "cost" if args.cost else "reward"
    state = "cached" if result.cached else "trained"
    print(f"{state} {kind} model: held-out pairwise accuracy {result.accuracy:.1%}")
    key = "model.cost_model_path" if args.cost else "model.reward_model_path"
    print(f"model: {result.model_dir} (use it as {key})")
    return 0


def add_rm(sub: argparse._SubParsersAction) -> None:
    from rlkit.config import add_config_args

    p = sub.add_parser(
        "rm",
        help="train a reward (or --cost) model on rule-labelled preference pairs (cached in --out)",
        description="Train a Bradley-Terry reward model on pairs of responses ranked by the task's rule reward "
        "(or a cost model on the rule cost with --cost), report held-out pairwise accuracy and export a "
        "Hugging Face sequence-classification folder OUT/model.",
    )
    add_config_args(p)
    p.add_argument("--out", default="runs/rm", help="output folder (default: runs/rm)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--pairs-per-step", type=int, default=None, help="preference pairs per optimizer step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--cost", action="store_true", help="train a Safe-RLHF cost model on the rule cost")
    p.add_argument("--force", action="store_true", help="retrain even if OUT holds this config's result")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_rm)


__all__ = ["add_sft", "add_rm"]
