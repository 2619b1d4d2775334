"""`plan(...)`: the entry point, from model shapes or from an rlkit `Config`."""

from __future__ import annotations

import os
from collections.abc import Mapping as MappingABC
from dataclasses import replace
from typing import Any

from rlkit.planner.cost_model import LLAMA, ModelSpec, Workload
from rlkit.planner.dataflow import PPO, Dataflow, rl_dataflow
from rlkit.planner.devices import ClusterSpec, DeviceSpec, detect_gpu, parse_cluster
from rlkit.planner.mapping import Plan, SearchSpace
from rlkit.planner.search import search

# The paper's workload (§8.1): 1024 prompts of 1024 tokens, 1024 generated tokens each; one PPO epoch in 4
# mini-batches (verl's example scripts), 2 sequences per training micro-batch, 8 per inference micro-batch.
PAPER_WORKLOAD = Workload(prompts=1024, prompt_len=1024, response_len=1024, mini_batches=4, micro_batch=2,
                          infer_micro_batch=8)

# Roles whose model ends in a scalar head.
_VALUE_ROLES = ("critic", "reward", "cost")


def model_spec(value: Any) -> ModelSpec:
    """The ModelSpec a name stands for: a Llama size key ("13b", "llama-13b"), a local model folder, or a hub
    model already in the local cache. Nothing downloads: planning stays instant and works offline."""
    if isinstance(value, str) and value.strip().lower().removeprefix("llama-") in LLAMA:
        return LLAMA[value.strip().lower().removeprefix("llama-")]
    try:
        return ModelSpec.from_pretrained(os.fspath(value))
    except ValueError as err:
        keys = ", ".join(LLAMA)
        raise ValueError(f"{value!r} is not a Llama size key ({keys}, or llama-<size>), and as a model folder or "
                         f"hub name: {str(err).removeprefix('ModelSpec.from_pretrained: ')}") from None


def _model(value: Any, role: str) -> ModelSpec:
    """A ModelSpec from what a user may pass: a spec, a preset key ("13b", "llama-13b"), a path, an HF config."""
    if isinstance(value, ModelSpec):
        spec = value
    elif isinstance(value, (str, os.PathLike)):
        spec = model_spec(value)
    elif hasattr(value, "num_hidden_layers"):
        spec = ModelSpec.from_hf_config(value)
    else:
        raise TypeError(f"plan: model for role {role!r} must be a ModelSpec, a Llama size key ({sorted(LLAMA)}), "
                        f"a model path or a transformers config, got {type(value).__name__}")
    return spec.with_value_head() if role in _VALUE_ROLES and not spec.value_head else spec


def _dataflow_for_roles(roles) -> Dataflow:
    roles = set(roles)
    if roles == set(PPO.roles):
        return PPO
    if "actor" not in roles:
        raise ValueError(f"plan: the models need an 'actor' role, got {sorted(roles)}")
    return rl_dataflow("custom", critic="critic" in roles, reference="ref" in roles, reward_model="reward" in roles,
                       cost_model="cost" in roles)


def _as_cluster(cluster: ClusterSpec | str | None) -> ClusterSpec:
    if isinstance(cluster, ClusterSpec):
        return cluster
    if isinstance(cluster, str):
        return parse_cluster(cluster)
    raise TypeError("plan: pass the cluster as a ClusterSpec or text like '128xA100-80GB' "
                    f"(got {type(cluster).__name__})")


def plan(config_or_models: Any, cluster: ClusterSpec | str | None = None, *, workload: Workload | None = None,
         dataflow: Dataflow | None = None, space: SearchSpace | None = None) -> Plan:
    """The best mapping of an RL dataflow onto a cluster, with the ranking of alternatives.

    `config_or_models` is one of:
    - an rlkit `Config` (see `plan_from_config`; `cluster` then overrides the config's devices);
    - a dict role -> model (ModelSpec, "7b"/"llama-13b", a local model path, or a transformers config);
      critic/reward/cost roles get a scalar head;
    - one model: the paper's setting, every PPO role (actor, critic, ref, reward) of that size.
    `cluster`: a ClusterSpec or text like "128xA100-80GB" (8 per node). `workload` defaults to the paper's
    (1024 prompts, 1024 + 1024 tokens); `dataflow` defaults to PPO for its four roles, else the generate/prepare/
    train flow of the roles given. Raises PlanError, with the missing memory, when nothing fits.
    """
    if hasattr(config_or_models, "rollout") and hasattr(config_or_models, "cluster"):
        return plan_from_config(config_or_models, cluster=cluster, space=space)
    if isinstance(config_or_models, MappingABC):
        models = {role: _model(m, role) for role, m in config_or_models.items()}
    else:
        flow = dataflow or PPO
        models = {role: _model(config_or_models, role) for role in flow.roles}
    dataflow = dataflow or _dataflow_for_roles(models)
    return search(models, dataflow, workload or PAPER_WORKLOAD, _as_cluster(cluster), space)


# ----------------------------------------------------------------------------------------------------------------
# From an rlkit Config
# ----------------------------------------------------------------------------------------------------------------


def _config_actor(cfg) -> ModelSpec:
    if cfg.model.path:
        return ModelSpec.from_pretrained(cfg.model.path, download=True)  # the run itself would download it
    from rlkit.data.models import tiny_model_config  # lazy: transformers
    from rlkit.data.tokenizer import build_char_tokenizer

    return ModelSpec.from_hf_config(tiny_model_config(cfg.model.preset, len(build_char_tokenizer())),
                                    name=cfg.model.preset)


def algorithm_spec(cfg):
    """The `AlgorithmSpec` of `cfg`'s algorithm: the one source of which models and calls a run has (the planner
    keeps no table of algorithm names). Imported lazily: the algorithms import torch, `rlkit.planner` does not."""
    from rlkit.algos.base import get_algorithm, spec_of

    return spec_of(get_algorithm(cfg.algo.name, cfg))


def config_models(cfg, actor: ModelSpec | None = None) -> dict[str, ModelSpec]:
    """Role -> model shape of the models a run of `cfg` places on devices (rule rewards need none).

    `actor` replaces the configured policy (and so the reference and a critic without `model.critic_path`,
    which start from it): `rlkit plan --model 13b` plans the config's algorithm at that size."""
    spec = algorithm_spec(cfg)
    actor = actor or _config_actor(cfg)
    models = {"actor": actor}
    if spec.needs_reference:
        models["ref"] = actor
    if spec.needs_critic:
        models["critic"] = (ModelSpec.from_pretrained(cfg.model.critic_path, download=True) if cfg.model.critic_path
                            else actor).with_value_head()
    if cfg.model.reward_model_path:
        models["reward"] = ModelSpec.from_pretrained(cfg.model.reward_model_path, download=True).with_value_head()
    if cfg.model.cost_model_path:
        models["cost"] = ModelSpec.from_pretrained(cfg.model.cost_model_path, download=True).with_value_head()
    return models


def config_dataflow(cfg, models: dict[str, ModelSpec]) -> Dataflow:
    """The stages of the configured algorithm: critic, reference and greedy baseline as its spec declares them,
    reward and cost models where `models` has them (a rule reward runs on no device)."""
    spec = algorithm_spec(cfg)
    for role, needed in (("critic", spec.needs_critic), ("ref", spec.needs_reference)):
        if needed and role not in models:
            raise ValueError(f"plan: algo.name = {cfg.algo.name!r} needs a {role!r} model, but the models given "
                             f"are {sorted(models)}")
    return rl_dataflow(cfg.algo.name, critic=spec.needs_critic, reference=spec.needs_reference,
                       reward_model="reward" in models, cost_model="cost" in models,
                       greedy_baseline=spec.greedy_baseline)


def config_workload(cfg) -> Workload:
    """Batch and lengths of one RL step of `cfg`."""
    return Workload(prompts=cfg.rollout.prompts_per_step, samples_per_prompt=cfg.rollout.n,
                    prompt_len=cfg.data.max_prompt_len, response_len=cfg.rollout.max_new_tokens,
                    epochs=cfg.actor.ppo_epochs, mini_batches=cfg.num_mini_batches,
                    micro_batch=cfg.actor.micro_batch_size, infer_micro_batch=cfg.actor.micro_batch_size)


def plan_workload(cfg, *, paper: bool = False, prompts: int | None = None, samples_per_prompt: int | None = None,
                  prompt_len: int | None = None, response_len: int | None = None) -> Workload:
    """The workload to plan: `cfg`'s step, or the paper's (`paper`, for a real model size: the tiny config's
    16 prompts of 16 tokens would say nothing about a 13B run), with the sizes given replacing its own.

    On the paper's workload a group-relative algorithm (GRPO...) keeps `cfg`'s `rollout.n` samples per prompt:
    one sample per prompt has no group to compare with."""
    group_relative = algorithm_spec(cfg).group_relative
    base = config_workload(cfg)
    if paper:
        base = replace(PAPER_WORKLOAD, samples_per_prompt=cfg.rollout.n if group_relative else 1)
    given = {"prompts": prompts, "samples_per_prompt": samples_per_prompt, "prompt_len": prompt_len,
             "response_len": response_len}
    workload = replace(base, **{k: v for k, v in given.items() if v is not None})
    if workload.samples_per_prompt < 2 and group_relative:
        raise ValueError(f"samples per prompt = {workload.samples_per_prompt}: algo.name = {cfg.algo.name!r} "
                         "compares the samples of one prompt with each other and needs >= 2")
    return workload


def config_device(cfg) -> DeviceSpec:
    """The device of `cfg`'s cluster: the calibrated CPU (one slot of `devices_per_node`) or the local GPU."""
    if cfg.resolved_device() == "cuda":
        device = detect_gpu()
    else:
        from rlkit.planner.calibrate import calibrate, cpu_device

        threads = cfg.cluster.threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.cluster.devices_per_node)
        device = cpu_device(calibrate(threads=threads), devices_per_node=cfg.cluster.devices_per_node)
    dtype_bytes = cfg.resolved_dtype().itemsize
    return device.with_dtype_bytes(dtype_bytes)


def plan_from_config(cfg, *, cluster: ClusterSpec | str | None = None, space: SearchSpace | None = None,
                     model: ModelSpec | str | None = None, workload: Workload | None = None) -> Plan:
    """Plan the run `cfg` describes: its models, algorithm, batch, and devices (or `cluster` instead).

    `model` (a ModelSpec or a name for `model_spec`) replaces the configured policy; `workload` replaces
    `cfg`'s batch and lengths (see `plan_workload`).
    rlkit's workers shard every model with FSDP2 over its group and the `hf` rollout generates on whole
    (gathered) weights, so the default search space is FSDP only, no tensor/pipeline parallelism, and generation
    tensor parallelism 1 (or `rollout.vllm_tensor_parallel_size` with the vLLM engine).
    """
    actor = None if model is None else model if isinstance(model, ModelSpec) else model_spec(model)
    models = config_models(cfg, actor)
    if cluster is None:
        cluster = ClusterSpec(config_device(cfg), cfg.cluster.nodes, cfg.cluster.devices_per_node)
    gen_tp = cfg.rollout.vllm_tensor_parallel_size if cfg.rollout.engine == "vllm" else 1
    space = space or SearchSpace(three_d=False, fsdp=True, max_tp=1, pipeline=False, gen_tp=(gen_tp,))
    return search(models, config_dataflow(cfg, models), workload or config_workload(cfg), _as_cluster(cluster), space)
