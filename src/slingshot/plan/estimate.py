"""Memory, time and cost of a training run, before anything is loaded. Pure functions of shapes and counts.

Units: memory in MiB (`_mb`), time in seconds (`_s`), money in US dollars (`_usd`), work in FLOPs.
Every constant says where it comes from: a paper, a datasheet, or a measurement on this project's machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from slingshot.plan.catalogue import ModelSpec

MB = 2**20
BYTES_PER_VALUE = {"fp32": 4, "bf16": 2, "fp16": 2}

# QLoRA stores the adapted matrices in 4-bit NormalFloat with double-quantized scales: 4 bits plus 0.127 bits of
# constants per parameter (Dettmers et al. 2023, "QLoRA", section 3, double quantization).
QLORA_BYTES_PER_PARAMETER = (4 + 0.127) / 8
# fused AdamW per trainable parameter per step: reads weight, gradient and two moments, writes weight and two moments
ADAMW_BYTES_MOVED_PER_PARAMETER = 7 * 4

# What the process holds besides the model, measured on this project's machine (2-core Xeon, torch 2.13 CPU,
# transformers 5.24): Python with torch, transformers, datasets, accelerate and peft imported is 470 MB RSS; whole
# runs of tiny BERTs (a few MB of weights) peaked at 520-610 MB (tests/test_plan.py), so data, tokenizer and the
# run's bookkeeping add ~80 MB.
CPU_RUNTIME_MB = 550.0
# A GPU run holds the CUDA context and cuBLAS workspace beside the tensors: ~0.5-1 GB depending on the GPU and
# driver (PyTorch CUDA semantics notes). Not measured here (no GPU): the upper end is used.
CUDA_RUNTIME_MB = 1024.0
# Past the live tensors a CPU process's RSS grows, fitted on all-MiniLM-L6-v2 runs here (3,000 SST-2 rows, one
# epoch; peak RSS 1,329 MB in fp32 and 1,481 MB in bf16 under glibc, before the kernel caches were capped):
# - copies of the weights at the end: safetensors serialises one when saving; LoRA first merges into a deep copy;
# - glibc's heap fragments under batches of ever-changing shapes: about one more batch of activations (fitted:
#   0.92). tcmalloc and jemalloc (allocator.py, the command's default where installed) keep size-class pools: with
#   tcmalloc, bench/plan_accuracy.py (3,000 rows, full / LoRA) peaked at 924 / 838 MB in bf16 (Xeon, AVX512) and
#   962 / 878 MB in fp32 (AMD EPYC, AVX2), which the tensors, the runtime and the weight copies alone already
#   over-estimate by 4-13%: no activation slack under them.
# bf16 autocast once cost ~300 MB more for oneDNN's and ideep's per-shape kernel caches; with both capped
# (train.limit_kernel_caches) the main job (8,000 rows, 3 epochs) peaked at 1,160 MB in bf16 and 1,127 MB in fp32
# under tcmalloc, 1,318 and 1,523 MB under glibc (fp32's activations are twice as large): no bf16 term any more.
# Longer runs fragment further (full SST-2, 2 epochs: 1,212 MB bf16 under tcmalloc), which this does not model.
CPU_SLACK_WEIGHT_COPIES = {"full": 1, "lora": 2, "qlora": 2}
CPU_SLACK_PER_ACTIVATION = {"glibc": 1.0, "pooled": 0.0}
# Share of the calibrated fp32 matmul throughput (at the model's width) a whole training step reaches: norms,
# activations, softmax, dropout, Python and data loading run between the matmuls. FINDINGS.md: a lean fp32 step
# of all-MiniLM-L6-v2 reached 62% of a 2048x2048 matmul's rate in the same process; at the model's own, narrower
# width matmuls are slower, so the share of that rate is higher: 0.7. GPU: 35% of the datasheet peak, a typical
# model-FLOPs utilisation of single-GPU fine-tuning (assumed, not measured here).
TRAINING_EFFICIENCY = {"cpu": 0.7, "cuda": 0.35}
INFERENCE_EFFICIENCY = {"cpu": 0.7, "cuda": 0.35}
# bf16 autocast on a CPU where it measures faster (train.cpu_has_fast_bf16) trains 1.42x faster than fp32 (train.py, autocast_dtype: 3,640 vs
# 2,566 real tokens/s, measured here); the bf16 matmul alone is 2-3x faster, the rest of the step is not.
CPU_BF16_TRAINING_SPEEDUP = 1.42
# Fixed cost of one batch whatever the model's size: Python, collation, autocast, kernel launches, scheduler. It is
# what a tiny model's run is made of: a 2-layer, 32-wide BERT trained 20 batches in 0.3 s here (15 ms each;
# tests/test_plan.py). GPU: the same, assumed.
STEP_OVERHEAD_S = {"cpu": 0.02, "cuda": 0.02}
# LoRA targets as tasks/classification.py sets them: q, k, v, and the output projection in Llama-style decoders
# (families without a default there get PEFT's, which this approximates the same way).
LORA_ADAPTS_OUTPUT_PROJECTION = {"llama", "qwen2", "mistral", "gemma2", "phi3"}
# Each LoRA adapter adds skinny matmuls, dropout and dtype casts on its layer's input: memory-bound work that the
# FLOP count misses, and that on a small model costs what the skipped weight gradients save. Fitted here
# (bench/plan_accuracy.py, all-MiniLM-L6-v2, 3,000 SST-2 rows, bf16, 18 adapters): LoRA trained in 16.3 s against
# 16.7 s for full fine-tuning where FLOPs alone said 9.4 s, i.e. ~250 bytes moved per input value per adapter at
# the profile's memory bandwidth. On a GPU's bandwidth it is small.
LORA_BYTES_PER_ADAPTED_VALUE = 250.0


@dataclass(frozen=True)
class Setup:
    """How the run trains: the recipe's choices that change memory and time."""

    method: str  # full, lora or qlora
    precision: str  # fp32, bf16 or fp16: the matmul precision (autocast), weights stay fp32 except qlora
    device: str  # cpu or cuda
    tokens_per_batch: int  # padded tokens in one forward/backward
    longest_sequence: int  # tokens; attention scores grow with its square
    gradient_checkpointing: bool = False
    frozen_embeddings: bool = False  # full fine-tuning without the input token table (train.freeze_embeddings)
    pooled_allocator: bool = False  # a CPU run under tcmalloc or jemalloc (allocator.py) rather than glibc's malloc
    lora_rank: int = 16
    labels: int = 2


@dataclass(frozen=True)
class Workload:
    """What the run processes; token counts are real tokens (no padding)."""

    train_tokens: int  # per epoch
    epochs: float
    padding_fraction: float  # share of padded cells; token-budget batching keeps it at a few percent
    mean_sequence: float  # token-weighted mean sequence length: what one token's attention costs
    eval_tokens: int
    evaluations: int  # how many times the eval split is scored
    prediction_tokens: float  # mean tokens of one text at prediction time
    batches_per_epoch: int  # token-budget batches, as batching.py cuts them
    grad_accum: int = 1
    teacher_flops: float = 0.0  # train.distill: the teachers' one forward pass over the training split

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps over all epochs, counted as train.py counts them."""
        return max(1, math.ceil(math.ceil(self.batches_per_epoch / self.grad_accum) * self.epochs))


@dataclass(frozen=True)
class MemoryEstimate:
    weights_mb: float
    low_precision_copies_mb: float  # bf16 copies of the matmul weights that autocast keeps for backward
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float
    runtime_mb: float  # interpreter, libraries, data, allocator slack (CPU) or CUDA context (GPU)
    trainable_parameters: int

    @property
    def total_mb(self) -> float:
        return (self.weights_mb + self.low_precision_copies_mb + self.gradients_mb + self.optimizer_mb
                + self.activations_mb + self.runtime_mb)

    def to_dict(self) -> dict:
        return {**{k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "total_mb": round(self.total_mb, 1)}


@dataclass(frozen=True)
class TimeEstimate:
    train_flops: float
    train_gflops_per_s: float  # the throughput assumed: calibrated matmul rate x efficiency
    matmul_time_s: float
    optimizer_time_s: float
    step_overhead_s: float
    eval_time_s: float
    prediction_ms: float  # one text, in batches (throughput, not single-request latency)
    adapter_time_s: float = 0.0  # LoRA/QLoRA: the adapters' memory-bound work (LORA_BYTES_PER_ADAPTED_VALUE)
    teacher_time_s: float = 0.0  # train.distill: before training, not in train_time_s (as in summary.json)

    @property
    def train_time_s(self) -> float:
        return self.matmul_time_s + self.optimizer_time_s + self.step_overhead_s + self.adapter_time_s

    def to_dict(self) -> dict:
        data = {k: round(v, 3) for k, v in asdict(self).items()}
        data["train_flops"] = float(f"{self.train_flops:.4g}")
        data["train_time_s"] = round(self.train_time_s, 1)
        return data


# ------------------------------------------------------------------------------------------------ parameters


def task_parameters(spec: ModelSpec, labels: int) -> int:
    """Parameters of the model as trained for classification: an untied LM output matrix gives way to a head."""
    return spec.parameters - spec.output_matrix_parameters + spec.hidden * labels + labels


def matmul_parameters(spec: ModelSpec) -> int:
    """Parameters a token is multiplied by (the N of 6N): all but the embedding tables and the dropped LM output."""
    return spec.non_embedding_parameters - spec.output_matrix_parameters


def lora_parameters(spec: ModelSpec, rank: int) -> int:
    """LoRA adds rank x (inputs + outputs) per adapted matrix (Hu et al. 2021): here q, k, v (and o for decoders)."""
    per_layer = rank * ((spec.hidden + spec.query_width) + 2 * (spec.hidden + spec.key_value_width))
    if spec.family in LORA_ADAPTS_OUTPUT_PROJECTION:
        per_layer += rank * (spec.query_width + spec.hidden)
    return spec.layers * per_layer


def trainable_parameters(spec: ModelSpec, setup: Setup) -> int:
    if setup.method == "full":
        frozen = spec.vocab * spec.hidden if setup.frozen_embeddings else 0  # the input token table
        return task_parameters(spec, setup.labels) - frozen
    # the classification head is trained too (PEFT's modules_to_save)
    return lora_parameters(spec, setup.lora_rank) + spec.hidden * setup.labels + setup.labels


# ------------------------------------------------------------------------------------------------ memory


def activation_bytes_per_token_layer(spec: ModelSpec, bytes_per_value: int, longest_sequence: int,
                                     attention_matrix_kept: bool) -> float:
    """Bytes one token leaves in one block for the backward pass.

    Following Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", section
    4.1), whose GPT block stores 34 bytes x hidden per token in 16-bit plus 5 x heads x sequence for attention:
    attention keeps its input, Q, K, V and its output; the MLP its input, the up-projection(s) and the activation;
    two norms their inputs. Generalised here to grouped-query attention, gated MLPs and any precision (dropout
    masks, 1 byte each, are left out). The heads x sequence scores are kept only by attention that materialises
    them (eager/math attention; flash and memory-efficient kernels recompute them).
    """
    attention = spec.hidden + 2 * spec.query_width + 2 * spec.key_value_width
    mlp = spec.hidden + (4 if spec.gated_mlp else 2) * spec.intermediate
    norms = 2 * spec.hidden
    per_token = (attention + mlp + norms) * bytes_per_value
    if attention_matrix_kept:
        per_token += 2 * spec.heads * longest_sequence * bytes_per_value  # softmax output and its dropout
    return per_token


def activations_mb(spec: ModelSpec, setup: Setup) -> float:
    """Activations of one batch kept for backward; with gradient checkpointing only each block's input is kept,
    plus one block's full set while it is recomputed."""
    bytes_per_value = BYTES_PER_VALUE[setup.precision]
    # CPU attention with a padding mask runs the math path, which materialises the scores; CUDA bf16 uses flash
    attention_matrix_kept = setup.device == "cpu" or setup.precision == "fp32"
    per_layer = activation_bytes_per_token_layer(spec, bytes_per_value, setup.longest_sequence, attention_matrix_kept)
    tokens = setup.tokens_per_batch
    if setup.gradient_checkpointing:
        kept = tokens * (spec.layers * spec.hidden * bytes_per_value + per_layer)
    else:
        kept = tokens * spec.layers * per_layer
    embeddings = tokens * spec.hidden * bytes_per_value * 2  # embedding output and its norm
    return (kept + embeddings) / MB


def memory_estimate(spec: ModelSpec, setup: Setup, runtime_mb: float | None = None) -> MemoryEstimate:
    """Peak memory of training: on a GPU the GPU's memory, on a CPU the process's resident memory."""
    parameters = task_parameters(spec, setup.labels)
    linear = spec.layers * spec.linear_parameters_per_layer()
    trainable = trainable_parameters(spec, setup)
    # transformers 5 loads a checkpoint in its own dtype and AdamW keeps its moments in the parameters' dtype;
    # PEFT keeps LoRA adapters in fp32 whatever the base
    stored = BYTES_PER_VALUE[spec.weights_dtype]
    state_bytes = stored if setup.method == "full" else 4
    if setup.method == "qlora":
        # 4-bit matmul weights; embeddings, norms and head in the 16-bit compute type
        weights = linear * QLORA_BYTES_PER_PARAMETER + (parameters - linear) * 2
        # matmul weights are dequantized one layer at a time
        copies = spec.linear_parameters_per_layer() * 2
    else:
        weights = parameters * stored
        # autocast keeps a 16-bit copy of each fp32 matmul weight for the backward pass
        copies = linear * BYTES_PER_VALUE[setup.precision] if setup.precision != "fp32" and stored == 4 else 0
    activations = activations_mb(spec, setup)
    if runtime_mb is None:
        runtime_mb = runtime_overhead_mb(setup, weights / MB, activations)
    return MemoryEstimate(
        weights_mb=weights / MB, low_precision_copies_mb=copies / MB, gradients_mb=trainable * state_bytes / MB,
        optimizer_mb=trainable * 2 * state_bytes / MB,  # AdamW: two moments per trainable parameter
        activations_mb=activations, runtime_mb=runtime_mb, trainable_parameters=trainable,
    )


def runtime_overhead_mb(setup: Setup, weights_mb: float, activations: float) -> float:
    """Memory beside the tensors: libraries and data (CPU RSS) or the CUDA context (GPU), see the constants above."""
    if setup.device == "cuda":
        return CUDA_RUNTIME_MB
    heap = CPU_SLACK_PER_ACTIVATION["pooled" if setup.pooled_allocator else "glibc"]
    slack = CPU_SLACK_WEIGHT_COPIES[setup.method] * weights_mb + heap * activations
    return CPU_RUNTIME_MB + slack


# ------------------------------------------------------------------------------------------------ time


def forward_flops_per_token(spec: ModelSpec, mean_sequence: float) -> float:
    """One inference forward pass: 2 FLOPs per matmul weight, plus attention over the mean sequence."""
    return 2 * matmul_parameters(spec) + 4 * spec.layers * spec.query_width * mean_sequence


def flops_per_token(spec: ModelSpec, setup: Setup, mean_sequence: float) -> float:
    """Training FLOPs per processed token: 6N + attention for full fine-tuning (Kaplan et al. 2020, table 1; the
    attention term as in nanoGPT's estimate_mfu: 12 x layers x width x sequence).

    Frozen weights need no weight gradient, so LoRA/QLoRA spend 4N on the base model plus 6 per adapter
    parameter; gradient checkpointing runs each forward twice (+2N and another attention forward).
    """
    n = matmul_parameters(spec)
    attention_forward = 4 * spec.layers * spec.query_width * mean_sequence  # QK^T and scores x V
    if setup.method == "full":
        flops = 6 * n + 3 * attention_forward
    else:
        flops = 4 * n + 3 * attention_forward + 6 * lora_parameters(spec, setup.lora_rank)
    if setup.gradient_checkpointing:
        flops += 2 * n + attention_forward
    return flops


def time_estimate(spec: ModelSpec, setup: Setup, workload: Workload, matmul_gflops: float,
                  memory_bandwidth_gb_s: float | None) -> TimeEstimate:
    """Training time = FLOPs / (calibrated matmul GFLOP/s at this width x efficiency) + optimizer steps (memory
    bound: bytes moved / bandwidth) + a fixed cost per step.

    matmul_gflops is the hardware's rate for the run at the model's width (planner.matmul_rate_gflops).
    """
    processed_tokens = workload.train_tokens * workload.epochs / max(1e-9, 1 - workload.padding_fraction)
    train_flops = flops_per_token(spec, setup, workload.mean_sequence) * processed_tokens
    rate = matmul_gflops * 1e9 * TRAINING_EFFICIENCY[setup.device]
    matmul_time = train_flops / rate
    batches = workload.batches_per_epoch * workload.epochs
    steps = workload.optimizer_steps
    bandwidth = (memory_bandwidth_gb_s or 10.0) * 1e9
    optimizer_time = steps * trainable_parameters(spec, setup) * ADAMW_BYTES_MOVED_PER_PARAMETER / bandwidth
    adapter_time = 0.0
    if setup.method != "full":
        adapters = spec.layers * (4 if spec.family in LORA_ADAPTS_OUTPUT_PROJECTION else 3)
        adapter_time = adapters * processed_tokens * spec.hidden * LORA_BYTES_PER_ADAPTED_VALUE / bandwidth
    forward_per_token = forward_flops_per_token(spec, workload.mean_sequence)
    inference_rate = matmul_gflops * 1e9 * INFERENCE_EFFICIENCY[setup.device]
    eval_time = forward_per_token * workload.eval_tokens * workload.evaluations / inference_rate
    prediction_forward = (2 * matmul_parameters(spec) + 4 * spec.layers * spec.query_width * workload.prediction_tokens)
    prediction_ms = prediction_forward * workload.prediction_tokens / inference_rate * 1000
    teacher_time = workload.teacher_flops / inference_rate
    return TimeEstimate(train_flops=train_flops, train_gflops_per_s=rate / 1e9, matmul_time_s=matmul_time,
                        optimizer_time_s=optimizer_time, step_overhead_s=batches * STEP_OVERHEAD_S[setup.device],
                        eval_time_s=eval_time, prediction_ms=prediction_ms, adapter_time_s=adapter_time,
                        teacher_time_s=teacher_time)


# ------------------------------------------------------------------------------------------------ cost


def cost_usd(seconds: float, price_per_hour_usd: float) -> float:
    return seconds / 3600 * price_per_hour_usd


def cost_per_1000_predictions_usd(prediction_ms: float, price_per_hour_usd: float) -> float:
    return cost_usd(prediction_ms / 1000 * 1000, price_per_hour_usd)
