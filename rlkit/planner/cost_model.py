"""Analytical time and memory of one model call (train, infer, generate) under a parallel strategy.

The paper's simulators (HybridFlow §6): training and log-prob/value inference
are compute-bound (FLOPs over the device's effective rate, plus communication
and pipeline bubbles); generation is memory-bandwidth-bound (every decode step
streams the weight shard and the KV cache). Memory counts the persistent states
of a model (weights, gradients, Adam) and the transient of one call
(activations, KV cache). Every function here is pure arithmetic on dataclasses.

Conventions: `b` = bytes per element in the compute dtype, P = parameters,
L = layers, h = hidden, V = vocabulary, S = sequences in a call, s = tokens per
sequence (prompt + response), n = devices of the model = dp * tp * pp.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from rlkit.planner.devices import ClusterSpec, allgather_time, ring_allreduce_time

# Activation elements stored per token per layer for the backward pass, per tensor-parallel rank, with a fused
# (flash) attention kernel: Korthikanti et al. 2022 count 34 bytes/token/hidden in fp16 without the s^2 term.
_ACT_ELEMS_PER_HIDDEN = 17
# Elementwise traffic per token per layer in one forward, in elements read + written: two RMSNorms, two residual
# adds, rotary on q and k (unfused, as eager PyTorch runs them); and per FFN unit of SwiGLU (read 2, write 1).
_ELEMWISE_PER_HIDDEN = 30
_ELEMWISE_PER_FFN = 3
# Logits traffic per token in fp32: write logits, read+write in log_softmax / gather.
_LOGITS_PASSES = 3


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer (all the cost model needs)."""

    name: str
    """Label used in tables and errors, e.g. "llama-7b"."""
    layers: int
    """Decoder layers (L)."""
    hidden: int
    """Residual width (h)."""
    heads: int
    """Attention heads."""
    kv_heads: int
    """Key/value heads (GQA when < heads): sets the KV cache size."""
    ffn: int
    """SwiGLU intermediate width."""
    vocab: int
    """Vocabulary (V): embedding and LM head width."""
    tied_embeddings: bool = False
    """LM head shares the embedding matrix (counted once in memory, still a matmul in FLOPs)."""
    value_head: bool = False
    """Scalar value/score head instead of the LM head (critic, reward and cost models)."""
    qkv_bias: bool = False
    """Biases on q/k/v projections (Qwen2)."""

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        attn = 2 * h * h + 2 * h * kv + (h + 2 * kv if self.qkv_bias else 0)
        return attn + 3 * h * self.ffn + 2 * h

    @property
    def head_params(self) -> int:
        """Parameters of the output head as stored (0 for a tied LM head)."""
        if self.value_head:
            return self.hidden + 1
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def num_params(self) -> int:
        """All parameters (embedding + layers + final norm + head)."""
        return self.vocab * self.hidden + self.layers * self.layer_params + self.hidden + self.head_params

    @property
    def matmul_params(self) -> int:
        """Parameters each token multiplies with: layers plus the output projection (tied or not)."""
        out = self.hidden if self.value_head else self.vocab * self.hidden
        return self.layers * self.layer_params + out

    @property
    def out_width(self) -> int:
        """Width of the per-token output: V logits, or 1 value."""
        return 1 if self.value_head else self.vocab

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV cache bytes one token occupies over all layers (K and V)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def with_value_head(self) -> ModelSpec:
        """The same trunk with a scalar head (a critic or reward model initialised from this model)."""
        from dataclasses import replace

        return replace(self, value_head=True, name=self.name if self.name.endswith("-value") else self.name + "-value")

    @classmethod
    def from_hf_config(cls, config, name: str | None = None) -> ModelSpec:
        """Read the shape of a transformers `PretrainedConfig` (Llama, Qwen2, Mistral ... field names)."""
        try:
            heads = config.num_attention_heads
            spec = cls(
                name=name or getattr(config, "name_or_path", None) or config.model_type,
                layers=config.num_hidden_layers,
                hidden=config.hidden_size,
                heads=heads,
                kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                ffn=config.intermediate_size,
                vocab=config.vocab_size,
                tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                qkv_bias=config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
            )
        except AttributeError as err:
            kind = type(config).__name__
            raise ValueError(f"ModelSpec.from_hf_config: config of type {kind} lacks {err.name!r}") from err
        return spec

    @classmethod
    def from_pretrained(cls, path: str, *, download: bool = False) -> ModelSpec:
        """The shape of a local model folder or a hub model (reads config.json only).

        By default nothing downloads: a hub name must already be in the local cache, so a name that is not
        fails at once instead of after the hub client's retries on a machine without network. `download=True`
        (a config's own model paths, which the run downloads anyway) may fetch config.json."""
        from transformers import AutoConfig

        local = os.path.isdir(path)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=not (download or local))
        except (OSError, ValueError) as err:
            if local or download:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            elif path.startswith(("/", ".", "~")) or os.path.exists(path):
                reason = "no such folder"
            else:
                reason = (f"not a local folder, and no hub model of that name is in the local cache (nothing is "
                          f"downloaded here: fetch its config first with "
                          f"huggingface_hub.hf_hub_download({path!r}, 'config.json'))")
            raise ValueError(f"ModelSpec.from_pretrained: cannot read the config of model {path!r}: {reason}") from None
        return cls.from_hf_config(config, name=str(path).rstrip("/").split("/")[-1])


# The paper's models (Llama 2 7B/13B/70B; 34B is Code Llama's shape with grouped-query attention).
LLAMA: dict[str, ModelSpec] = {
    "7b": ModelSpec("llama-7b", 32, 4096, 32, 32, 11008, 32000),
    "13b": ModelSpec("llama-13b", 40, 5120, 40, 40, 13824, 32000),
    "34b": ModelSpec("llama-34b", 48, 8192, 64, 8, 22016, 32000),
    "70b": ModelSpec("llama-70b", 80, 8192, 64, 8, 28672, 32000),
}


@dataclass(frozen=True)
class Workload:
    """The shapes of one RL iteration (the paper's "workload W")."""

    prompts: int
    """Prompts per iteration (the global batch)."""
    prompt_len: int
    """Tokens per prompt (padded length)."""
    response_len: int
    """Generated tokens per response (the paper fixes it; set max_new_tokens here)."""
    samples_per_prompt: int = 1
    """Responses generated per prompt (GRPO's group size)."""
    epochs: int = 1
    """Passes over the batch in one train call (PPO epochs)."""
    mini_batches: int = 1
    """Optimizer updates per epoch."""
    micro_batch: int = 1
    """Sequences per forward/backward on one data-parallel replica in training."""
    infer_micro_batch: int = 8
    """Sequences per forward on one replica in log-prob/value inference."""

    def __post_init__(self):
        for name in ("prompts", "prompt_len", "response_len", "samples_per_prompt", "epochs", "mini_batches",
                     "micro_batch", "infer_micro_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Workload.{name} must be an integer >= 1, got {value!r}")

    @property
    def sequences(self) -> int:
        """Prompt-response pairs per iteration."""
        return self.prompts * self.samples_per_prompt

    @property
    def seq_len(self) -> int:
        """Tokens per sequence (prompt + response)."""
        return self.prompt_len + self.response_len

    @property
    def tokens(self) -> int:
        """Prompt + response tokens per iteration: the throughput numerator of the paper."""
        return self.sequences * self.seq_len


@dataclass(frozen=True)
class Strategy:
    """How one model is parallelised over its n = dp * tp * pp devices."""

    dp: int
    """Data-parallel size (d)."""
    tp: int = 1
    """Tensor-parallel size (t), inside a node."""
    pp: int = 1
    """Pipeline-parallel size (p)."""
    fsdp: bool = False
    """Weights and gradients sharded over the dp ranks too (FSDP / ZeRO-3); else only optimizer states (ZeRO-1)."""

    @property
    def size(self) -> int:
        """Devices the strategy uses."""
        return self.dp * self.tp * self.pp

    @property
    def model_parallel(self) -> int:
        """Devices one model replica spans (t * p)."""
        return self.tp * self.pp

    @property
    def label(self) -> str:
        """Short text like "d16t8p1" or "fsdp8"."""
        if self.fsdp:
            return f"fsdp{self.dp}" + (f"t{self.tp}" if self.tp > 1 else "") + (f"p{self.pp}" if self.pp > 1 else "")
        return f"d{self.dp}t{self.tp}p{self.pp}"


@dataclass(frozen=True)
class CallCost:
    """Predicted time and transient memory of one call of one model."""

    time: float
    """Seconds the call takes on its devices."""
    transient: float
    """Bytes per device the call needs on top of the resident states (activations, KV cache, gathered weights)."""
    note: str = ""
    """Choice made inside the call (recomputation, generation layout), for tables."""


# ----------------------------------------------------------------------------------------------------------------
# FLOPs and bytes
# ----------------------------------------------------------------------------------------------------------------


def forward_flops(model: ModelSpec, tokens: float, ctx: float) -> float:
    """FLOPs of a forward over `tokens` tokens that each attend to `ctx` positions on average.

    2 FLOPs per multiply-add with every matmul parameter, plus attention scores and weighted sum
    (2 matmuls of ctx x h per token per layer).
    """
    return tokens * (2 * model.matmul_params + 4 * model.layers * ctx * model.hidden)


def weight_bytes(model: ModelSpec, dtype_bytes: int) -> float:
    """Bytes of the weights in the compute dtype (M in the paper's transition formulas)."""
    return model.num_params * dtype_bytes


GRAD_BYTES = 4
"""Bytes per gradient element: accumulated and reduced in fp32 under mixed precision."""


def optimizer_bytes_per_param(dtype_bytes: int) -> int:
    """Adam moments in fp32 (8 bytes), plus an fp32 master copy when computing in a 2-byte dtype."""
    return 8 + (4 if dtype_bytes < 4 else 0)


def resident_bytes(model: ModelSpec, strategy: Strategy, trained: bool, dtype_bytes: int) -> float:
    """Persistent bytes per device: weights (+ gradients and Adam states when trained).

    Mixed precision as Megatron-LM and FSDP2 run it: gradients are accumulated and reduced in fp32
    (`GRAD_BYTES`), Adam keeps fp32 moments and, below fp32, an fp32 master copy. 3D: weights and gradients
    sharded over t * p, optimizer states over all n devices (distributed optimizer, ZeRO-1). FSDP: everything
    sharded over all n devices, the fp32 master being the sharded parameter itself.
    """
    P, n = model.num_params, strategy.size
    if not trained:
        return P * dtype_bytes / (n if strategy.fsdp else strategy.model_parallel)
    if strategy.fsdp:
        return P * (max(dtype_bytes, 4) + GRAD_BYTES + 8) / n
    return P * (dtype_bytes + GRAD_BYTES) / strategy.model_parallel + P * optimizer_bytes_per_param(dtype_bytes) / n


def _rate(cluster: ClusterSpec) -> float:
    dev = cluster.device
    return dev.peak_flops * dev.flops_efficiency


def _bandwidth(cluster: ClusterSpec) -> float:
    dev = cluster.device
    return dev.mem_bandwidth * dev.bandwidth_efficiency


def _roofline(flops: float, nbytes: float, cluster: ClusterSpec) -> float:
    """Seconds for `flops` of matmul that stream `nbytes` (weights, KV): overlapped (max) or not (sum)."""
    compute, memory = flops / _rate(cluster), nbytes / _bandwidth(cluster)
    return max(compute, memory) if cluster.device.overlap_memory_compute else compute + memory


def elementwise_time(model: ModelSpec, tokens: float, shard: int, cluster: ClusterSpec) -> float:
    """Seconds of the non-matmul ops of one forward over `tokens` tokens, split `shard` ways."""
    dev, b = cluster.device, cluster.device.dtype_bytes
    simple = tokens * model.layers * _ELEMWISE_PER_HIDDEN * model.hidden / shard
    gated = tokens * model.layers * model.ffn / shard
    simple_rate = dev.elementwise_rate or _bandwidth(cluster) / b
    gated_rate = dev.activation_rate or _bandwidth(cluster) / (_ELEMWISE_PER_FFN * b)
    return simple / simple_rate + gated / gated_rate


def _forward_compute_time(model: ModelSpec, tokens: float, ctx: float, shard: int, cluster: ClusterSpec,
                          logits: bool, calls: float = 1, extra_bytes: float = 0.0) -> float:
    """Time of the math of a forward over `tokens` tokens split `shard` ways (tp*pp, or tg), in `calls` calls.

    Matmuls: roofline of FLOPs and the weight shard streamed once per call (+ `extra_bytes`, e.g. the KV cache);
    then the elementwise ops and, for log-probs, the fp32 logits passes.
    """
    b = cluster.device.dtype_bytes
    nbytes = calls * weight_bytes(model, b) / shard + extra_bytes
    t = _roofline(forward_flops(model, tokens, ctx) / shard, nbytes, cluster)
    t += elementwise_time(model, tokens, shard, cluster)
    if logits:
        t += tokens * model.out_width * 4 * _LOGITS_PASSES / shard / _bandwidth(cluster)
    return t


def _overhead(cluster: ClusterSpec, layers: float, calls: float) -> float:
    dev = cluster.device
    return calls * (dev.forward_call_overhead + layers * dev.forward_layer_overhead)


def _tp_allreduce(cluster: ClusterSpec, nbytes: float, tp: int) -> float:
    return ring_allreduce_time(nbytes, tp, cluster.group_bandwidth(tp), cluster.device.collective_latency)


def _p2p(cluster: ClusterSpec, nbytes: float, strategy: Strategy) -> float:
    """One pipeline hop of `nbytes` (per tensor-parallel rank); stages are t*d ranks apart (Megatron order t, d, p)."""
    if strategy.pp <= 1:
        return 0.0
    bw = cluster.group_bandwidth(2, stride=strategy.tp * strategy.dp)
    return nbytes / bw + cluster.device.collective_latency


# ----------------------------------------------------------------------------------------------------------------
# Calls
# ----------------------------------------------------------------------------------------------------------------


def train_cost(model: ModelSpec, strategy: Strategy, workload: Workload, cluster: ClusterSpec,
               recompute: bool = False) -> CallCost:
    """One train call: `epochs` passes over the batch in `mini_batches` optimizer updates each.

    Time = compute ((3, or 4 with recomputation) x forward FLOPs over n devices, stretched by the pipeline bubble
    (p-1)/m) + tensor-parallel all-reduces (4 per layer per micro-batch) + pipeline sends (activation forward,
    gradient backward per micro-batch) + gradient synchronisation per update
    (ring all-reduce over d; with FSDP two weight all-gathers and a reduce-scatter per micro-batch) + the Adam
    update (memory-bound) + host overheads. Communication is not assumed to overlap compute.
    """
    dev, b = cluster.device, cluster.device.dtype_bytes
    d, t, p, n = strategy.dp, strategy.tp, strategy.pp, strategy.size
    s, S = workload.seq_len, workload.sequences
    per_replica = math.ceil(S / d)
    mb = max(1, min(workload.micro_batch, per_replica))
    micro_steps = math.ceil(per_replica / mb)  # forward/backward calls per replica per epoch
    per_update = max(1, micro_steps // workload.mini_batches)
    updates = workload.epochs * workload.mini_batches
    passes = 1 + dev.backward_compute_factor + (1 if recompute else 0)  # + a second forward when recomputing
    layers = model.layers / p

    compute = passes * _forward_compute_time(model, per_replica * s, (s + 1) / 2, t * p, cluster, logits=True,
                                             calls=micro_steps)
    compute *= workload.epochs
    overhead = _overhead(cluster, layers, workload.epochs * micro_steps)
    overhead *= 1 + dev.backward_overhead_factor + (1 if recompute else 0)
    bubble = (p - 1) / per_update
    busy = (compute + overhead) * (1 + bubble)

    act_bytes = mb * s * model.hidden * b  # one micro-batch's hidden states
    tp_comm = workload.epochs * micro_steps * model.layers / p * 4 * _tp_allreduce(cluster, act_bytes, t)
    tp_comm += workload.epochs * micro_steps * 2 * _p2p(cluster, mb * s * model.hidden * b / t, strategy)
    shard_bytes = model.num_params * b / (t * p)
    grad_bytes = model.num_params * GRAD_BYTES / (t * p)
    dp_bw = cluster.group_bandwidth(d, stride=t)
    if strategy.fsdp:
        per_micro = 2 * allgather_time(shard_bytes, d, dp_bw, dev.collective_latency)
        per_micro += allgather_time(grad_bytes, d, dp_bw, dev.collective_latency)  # reduce-scatter: same volume
        dp_comm = workload.epochs * micro_steps * per_micro
    else:
        dp_comm = updates * ring_allreduce_time(grad_bytes, d, dp_bw, dev.collective_latency)
    # Adam reads/writes moments (+ master) and the weight, reads the gradient: ~2x optimizer state + 3 b per param.
    optim = updates * model.num_params / n * (2 * optimizer_bytes_per_param(b) + 3 * b) / _bandwidth(cluster)
    optim += updates * (dev.optimizer_overhead + layers * dev.optimizer_layer_overhead)

    act_token = mb * s * model.hidden * b  # one layer's input, kept per layer when recomputing
    in_flight = min(p, per_update)  # 1F1B: the first stage holds p micro-batches
    full_layer = _ACT_ELEMS_PER_HIDDEN * act_token / t
    acts = (act_token * layers * in_flight + full_layer) if recompute else full_layer * layers * in_flight
    logits = mb * s * model.out_width * 4 * 2 / t
    gathered = 2 * model.layer_params * b / t if strategy.fsdp else 0.0  # prefetched unsharded layers
    note = "recompute" if recompute else ""
    return CallCost(busy + tp_comm + dp_comm + optim, acts + logits + gathered, note)


def infer_cost(model: ModelSpec, strategy: Strategy, workload: Workload, cluster: ClusterSpec,
               sequences: int | None = None) -> CallCost:
    """One forward over the batch (log-probs, values, rewards): compute-bound, micro-batched per replica."""
    b = cluster.device.dtype_bytes
    d, t, p = strategy.dp, strategy.tp, strategy.pp
    s = workload.seq_len
    per_replica = math.ceil((sequences or workload.sequences) / d)
    mb = max(1, min(workload.infer_micro_batch, per_replica))
    micro_steps = math.ceil(per_replica / mb)
    compute = _forward_compute_time(model, per_replica * s, (s + 1) / 2, t * p, cluster, logits=True,
                                    calls=micro_steps)
    busy = (compute + _overhead(cluster, model.layers / p, micro_steps)) * (1 + (p - 1) / micro_steps)
    tp_comm = micro_steps * model.layers / p * 2 * _tp_allreduce(cluster, mb * s * model.hidden * b, t)
    tp_comm += micro_steps * _p2p(cluster, mb * s * model.hidden * b / t, strategy)
    fsdp_comm = 0.0
    if strategy.fsdp:
        bw = cluster.group_bandwidth(d, stride=t)
        gather = allgather_time(model.num_params * b / (t * p), d, bw, cluster.device.collective_latency)
        fsdp_comm = micro_steps * gather
    acts = 4 * mb * s * model.hidden * b / t + mb * s * model.out_width * 4 * 2 / t
    gathered = 2 * model.layer_params * b / t if strategy.fsdp else 0.0
    return CallCost(busy + tp_comm + fsdp_comm, acts + gathered)


def generation_weight_extra(model: ModelSpec, strategy: Strategy, gen_tp: int, dtype_bytes: int) -> float:
    """Bytes per device the generation layout adds over the training shard (3D-HybridEngine: zero redundancy).

    Each device's generation shard (1/tg of the weights) contains its training shard, so only the difference is
    gathered: M/tg - M/(t p) (and M/tg - M/n under FSDP, whose training shard is 1/n).
    """
    shard = strategy.size if strategy.fsdp else strategy.model_parallel
    m = weight_bytes(model, dtype_bytes)
    return max(0.0, m / gen_tp - m / shard)


def generate_cost(model: ModelSpec, gen_tp: int, devices: int, workload: Workload, cluster: ClusterSpec,
                  kv_budget: float, sequences: int | None = None) -> CallCost | None:
    """Generate `response_len` tokens for every sequence on `devices` devices in replicas of `gen_tp` devices.

    Memory-bandwidth-bound decoding: each step streams the weight shard (M/tg) and the live KV cache, or is
    compute-bound when the wave is large enough. Sequences that do not fit the KV budget (bytes per device) run in
    successive waves. Returns None when not even one sequence's KV cache fits.
    """
    dev, b = cluster.device, cluster.device.dtype_bytes
    tg = gen_tp
    replicas = devices // tg
    S = sequences or workload.sequences
    per_replica = math.ceil(S / replicas)
    P_len, T_len = workload.prompt_len, workload.response_len
    kv_token = model.kv_bytes_per_token(b) / tg  # per device
    kv_seq = kv_token * (P_len + T_len)
    logits_per_seq = model.vocab * 4 * 2
    fit = int(kv_budget // (kv_seq + logits_per_seq)) if kv_budget > 0 else 0
    if fit < 1:
        return None
    waves = math.ceil(per_replica / fit)
    wave = math.ceil(per_replica / waves)

    prefill = _forward_compute_time(model, wave * P_len, (P_len + 1) / 2, tg, cluster, logits=False)
    prefill += wave * P_len * model.vocab * 4 / tg / _bandwidth(cluster)  # prompt logits
    prefill += dev.generate_call_overhead + dev.forward_call_overhead + model.layers * dev.forward_layer_overhead
    prefill += model.layers * 2 * _tp_allreduce(cluster, wave * P_len * model.hidden * b, tg)

    ctx = P_len + T_len / 2  # average context over the decode steps
    # one token per sequence: stream the weight shard and the live KV cache
    step = _forward_compute_time(model, wave, ctx, tg, cluster, logits=True, extra_bytes=wave * kv_token * ctx)
    step += dev.decode_step_overhead + model.layers * dev.decode_layer_overhead
    step += model.layers * 2 * _tp_allreduce(cluster, wave * model.hidden * b, tg)
    total = waves * (prefill + max(0, T_len - 1) * step)
    note = f"tg={tg}" + (f", {waves} waves of {wave}" if waves > 1 else f", batch {wave}")
    return CallCost(total, wave * (kv_seq + logits_per_seq), note)


# ----------------------------------------------------------------------------------------------------------------
# Resharding between training and generation (paper §5, Table 2)
# ----------------------------------------------------------------------------------------------------------------


def transition_volumes(weights: float, tp: int, pp: int, dp: int, gen_tp: int,
                       gen_pp: int = 1) -> dict[str, dict[str, float]]:
    """Per-device communication volume, peak memory and redundancy of one train->generate transition.

    `weights` = M (bytes of the actor). Formulas of the paper's Table 2 for DeepSpeed-Chat (all-gather over all
    devices), HybridFlow-V (all-gather over t p, separate generation weights) and HybridFlow (all-gather within
    the micro-DP group of d_g = t p / (t_g p_g) devices, generation shard contains the training shard).
    """
    tpd, tpm = tp * pp * dp, tp * pp
    d_g = tpm // (gen_tp * gen_pp)
    return {
        "ds-chat": {"volume": (tpd - 1) / tpd * weights, "peak": weights, "redundancy": weights / tpd},
        "hybridflow-v": {"volume": (tpm - 1) / tpm * weights, "peak": weights, "redundancy": weights / tpm},
        "hybridflow": {"volume": (d_g - 1) / tpm * weights, "peak": weights / (gen_tp * gen_pp), "redundancy": 0.0},
    }


def transition_cost(model: ModelSpec, strategy: Strategy, gen_tp: int, cluster: ClusterSpec) -> float:
    """Seconds to gather the generation shard from the training shards (HybridFlow's micro-DP all-gather)."""
    b, dev = cluster.device.dtype_bytes, cluster.device
    shard = strategy.size if strategy.fsdp else strategy.model_parallel
    group = shard // gen_tp  # micro-DP size d_g: devices whose training shards make one generation shard
    if group <= 1:
        return 0.0
    bw = cluster.group_bandwidth(shard)
    return allgather_time(weight_bytes(model, b) / gen_tp, group, bw, dev.collective_latency)
