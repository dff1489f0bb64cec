"""The plan of a recipe: its model's shape, its data in tokens, the hardware, and estimates for full, LoRA and QLoRA
training, with the advice that follows. Reads config.json and the data; never loads weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from slingshot.allocator import preloaded
from slingshot.plan.catalogue import ModelSpec, model_spec
from slingshot.plan.estimate import (
    CPU_BF16_TRAINING_SPEEDUP,
    MemoryEstimate,
    Setup,
    TimeEstimate,
    Workload,
    cost_per_1000_predictions_usd,
    cost_usd,
    forward_flops_per_token,
    memory_estimate,
    time_estimate,
)
from slingshot.plan.hardware import PROFILES, Hardware, get_hardware
from slingshot.recipe import Recipe

METHODS = ("full", "lora", "qlora")
# One token is about four characters of English text for BPE/WordPiece vocabularies (OpenAI's tokenizer guide);
# used only when the model's tokenizer is not on disk.
CHARACTERS_PER_TOKEN = 4.0


@dataclass
class DataProfile:
    """The recipe's data in tokens, as the model would see it (truncated at max_length)."""

    train_rows: int
    train_tokens: int
    eval_tokens: int
    mean_tokens: float  # per text
    mean_sequence: float  # token-weighted: the sequence length an average token sits in
    longest_sequence: int
    padding_fraction: float  # of token-budget batches of these lengths
    batches_per_epoch: int
    labels: int
    counted_with: str  # "tokenizer" or "characters / 4"


@dataclass
class MethodPlan:
    method: str
    setup: Setup
    memory: MemoryEstimate
    time: TimeEstimate
    fits: bool
    available: bool  # QLoRA needs a CUDA GPU (bitsandbytes)
    train_cost_usd: float
    cost_per_1000_predictions_usd: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "fits": self.fits, "available": self.available, "note": self.note,
                "precision": self.setup.precision, "gradient_checkpointing": self.setup.gradient_checkpointing,
                "memory": self.memory.to_dict(), "time": self.time.to_dict(),
                "train_cost_usd": round(self.train_cost_usd, 6),
                "cost_per_1000_predictions_usd": round(self.cost_per_1000_predictions_usd, 8)}


@dataclass
class Plan:
    recipe_name: str
    task: str
    model: ModelSpec
    hardware: Hardware
    price_per_hour_usd: float
    data: DataProfile
    workload: Workload
    chosen: str  # the recipe's method
    methods: dict[str, MethodPlan]
    memory_limit_mb: float
    fixes: list = field(default_factory=list)  # advice.Fix, when the chosen setup does not fit
    shortlist: list = field(default_factory=list)  # advice.Suggestion

    @property
    def chosen_plan(self) -> MethodPlan:
        return self.methods[self.chosen]

    @property
    def fits(self) -> bool:
        return self.chosen_plan.fits and self.chosen_plan.available

    def to_dict(self) -> dict[str, Any]:
        spec = self.model
        return {
            "recipe": self.recipe_name, "task": self.task, "fits": self.fits, "chosen_method": self.chosen,
            "model": {"id": spec.id, "kind": spec.kind, "parameters": spec.parameters,
                      "non_embedding_parameters": spec.non_embedding_parameters, "layers": spec.layers,
                      "hidden": spec.hidden, "license": spec.license, "source": spec.source},
            "hardware": {**self.hardware.to_dict(), "price_per_hour_usd": self.price_per_hour_usd},
            "memory_limit_mb": round(self.memory_limit_mb, 1),
            "data": self.data.__dict__,
            "workload": self.workload.__dict__,
            "methods": {name: plan.to_dict() for name, plan in self.methods.items()},
            "fixes": [fix.__dict__ for fix in self.fixes],
            "shortlist": [suggestion.__dict__ for suggestion in self.shortlist],
        }


def make_plan(recipe: Recipe, hardware: Hardware | str | None = None, *, calibrate: bool = True,
              with_shortlist: bool = True) -> Plan:
    """Plan the recipe on `hardware` (a Hardware, a profile name, or None for recipe.plan.hardware).

    Raises SlingshotError when the model's shape or the data cannot be read.
    """
    from slingshot.plan import advice

    if not isinstance(hardware, Hardware):
        hardware = get_hardware(hardware or recipe.plan.hardware, calibrate=calibrate, threads=recipe.train.threads)
    spec = model_spec(recipe.model.name, recipe.model.revision)
    data = profile_data(recipe, spec)
    workload = workload_of(recipe, data)
    price = price_per_hour_usd(recipe, hardware)
    limit = hardware.memory_limit_mb * recipe.plan.usable_memory_fraction
    methods = {method: plan_method(spec, setup_for(recipe, spec, hardware, data, method), workload, hardware, price,
                                   limit) for method in METHODS}
    plan = Plan(recipe.name or "run", recipe.task, spec, hardware, price, data, workload, recipe.train.method,
                methods, limit)
    if not plan.fits:
        plan.fixes = advice.fixes(plan, recipe)
    if with_shortlist:
        plan.shortlist = advice.shortlist(recipe, plan)
    return plan


def plan_method(spec: ModelSpec, setup: Setup, workload: Workload, hardware: Hardware, price: float,
                limit_mb: float) -> MethodPlan:
    memory = memory_estimate(spec, setup)
    gflops = matmul_rate_gflops(hardware, setup.precision, spec.hidden)
    timing = time_estimate(spec, setup, workload, gflops, hardware.memory_bandwidth_gb_s)
    available = setup.method != "qlora" or setup.device == "cuda"
    note = "" if available else "QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels)"
    return MethodPlan(
        setup.method, setup, memory, timing, fits=memory.total_mb <= limit_mb, available=available,
        train_cost_usd=cost_usd(timing.train_time_s + timing.eval_time_s + timing.teacher_time_s, price),
        cost_per_1000_predictions_usd=cost_per_1000_predictions_usd(timing.prediction_ms, price), note=note,
    )


def setup_for(recipe: Recipe, spec: ModelSpec, hardware: Hardware, data: DataProfile, method: str,
              **changes: Any) -> Setup:
    """The recipe's training choices for this model on this hardware; `changes` overrides fields (what-if)."""
    values: dict[str, Any] = {
        "method": method,
        "precision": training_precision(recipe.train.precision, hardware, method, spec.weights_dtype),
        "device": hardware.device, "tokens_per_batch": recipe.train.tokens_per_batch,
        "longest_sequence": min(data.longest_sequence, recipe.train.tokens_per_batch),
        "gradient_checkpointing": recipe.train.gradient_checkpointing or method == "qlora",
        "frozen_embeddings": recipe.freezes_embeddings(method),
        # the command runs under tcmalloc or jemalloc where one is installed, and training runs in this process
        "pooled_allocator": hardware.device == "cpu" and preloaded() in {"tcmalloc", "jemalloc"},
        "lora_rank": recipe.train.lora.r, "labels": data.labels,
    }
    values.update(changes)
    return Setup(**values)


def training_precision(requested: str, hardware: Hardware, method: str, weights_dtype: str = "fp32") -> str:
    """The precision train.py would compute in: bf16 autocast where fast (autocast_dtype), else fp32; QLoRA in
    16 bits; a 16-bit checkpoint in its own dtype (transformers 5 loads it so)."""
    if method == "qlora":
        return "bf16" if hardware.fast_bf16 else "fp16"
    if weights_dtype != "fp32":
        return weights_dtype
    if requested == "fp32":
        return "fp32"
    if requested == "bf16" or hardware.fast_bf16:
        return "bf16"
    return "fp32"


def matmul_rate_gflops(hardware: Hardware, precision: str, width: int) -> float:
    """The matmul rate a run's time is reckoned from. On a CPU, bf16 training is fp32's rate x the measured bf16
    speed-up of a whole step (its matmuls alone gain far more); on a GPU, the rate in the run's precision."""
    if hardware.device == "cpu" and precision == "bf16":
        return hardware.gflops_at(width, "fp32") * CPU_BF16_TRAINING_SPEEDUP
    return hardware.gflops_at(width, precision if precision in hardware.matmul_gflops else "fp32")


def price_per_hour_usd(recipe: Recipe, hardware: Hardware) -> float:
    """The recipe's price for this hardware (plan.price_per_hour_usd), else the profile's, else, for this
    machine, output.price_per_hour_usd or the price of a cloud instance with as many cores or the same GPU."""
    overrides = recipe.plan.price_per_hour_usd
    for key in (hardware.name, "auto" if hardware.measured else None):
        if key is not None and key in overrides:
            return overrides[key]
    if not hardware.measured:
        return hardware.price_per_hour_usd
    if recipe.output.price_per_hour_usd > 0:
        return recipe.output.price_per_hour_usd
    if hardware.device == "cuda" and hardware.accelerator:
        detected = set(hardware.accelerator.upper().replace("-", " ").split())
        for profile in PROFILES.values():  # e.g. "NVIDIA A100 80GB" matches "NVIDIA A100-SXM4-80GB"
            if profile.accelerator and set(profile.accelerator.upper().split()[1:]) <= detected:
                return profile.price_per_hour_usd
        return 0.0
    # on-demand CPU instances scale linearly with cores (AWS m7i: large 0.1008, xlarge 0.2016, 2xlarge 0.4032)
    return PROFILES["cpu-2core"].price_per_hour_usd * hardware.cores / 2


# ------------------------------------------------------------------------------------------------ data


def profile_data(recipe: Recipe, spec: ModelSpec) -> DataProfile:
    """Token counts of the recipe's train and eval splits (with the model's tokenizer when on disk)."""
    from slingshot.batching import padding_fraction, token_budget_batches
    from slingshot.data import load_data

    loaded = load_data(recipe, strict=False, splits=("train", "eval"))
    max_length = min(recipe.model.max_length, spec.context_length)
    tokenizer = _local_tokenizer(spec)

    def lengths_of(split: str) -> list[int]:
        rows = loaded.splits[split]
        if "text" in rows.column_names:
            texts = list(rows["text"])
            pairs = list(rows["text_pair"]) if "text_pair" in rows.column_names else None
        elif {"question", "context"} <= set(rows.column_names):  # extractive QA: question and context together
            texts, pairs = list(rows["question"]), list(rows["context"])
        else:  # generation and others: every text of a row (prompt, completion, chat messages) makes its input
            texts, pairs = [_row_text(row) for row in rows], None
        if tokenizer is not None:
            ids = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
            return [len(x) for x in ids]
        chars = [len(t) + (len(pairs[i]) if pairs else 0) for i, t in enumerate(texts)]
        return [min(max_length, 2 + math.ceil(c / CHARACTERS_PER_TOKEN)) for c in chars]

    train_lengths = lengths_of("train")
    eval_lengths = lengths_of("eval")
    # the batches training will cut: a small training set gets a smaller budget (train.min_steps)
    batches = token_budget_batches(train_lengths, recipe.batch_tokens(train_lengths),
                                   recipe.train.max_batch_size, shuffle=True, seed=recipe.train.seed)
    total = sum(train_lengths)
    labels = len(loaded.label_names) if loaded.label_names else 1
    return DataProfile(
        train_rows=len(train_lengths), train_tokens=total, eval_tokens=sum(eval_lengths),
        mean_tokens=total / max(1, len(train_lengths)),
        mean_sequence=sum(n * n for n in train_lengths) / max(1, total),
        longest_sequence=max(train_lengths, default=1),
        padding_fraction=round(padding_fraction(batches, train_lengths), 4), batches_per_epoch=len(batches),
        labels=labels, counted_with="tokenizer" if tokenizer is not None else "characters / 4",
    )


def _row_text(row: dict) -> str:
    def strings(value) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [text for item in value.values() for text in strings(item)]
        if isinstance(value, list):
            return [text for item in value for text in strings(item)]
        return []
    return " ".join(strings(row))


def _local_tokenizer(spec: ModelSpec):
    """The model's tokenizer when its files sit beside the config.json read (no network), else None."""
    if not spec.source or not spec.source.endswith("config.json"):
        return None
    from pathlib import Path

    from slingshot.errors import ModelError
    from slingshot.models import load_tokenizer

    try:
        return load_tokenizer(Path(spec.source).parent)
    except ModelError:
        return None


def workload_of(recipe: Recipe, data: DataProfile) -> Workload:
    epochs = recipe.train.epochs
    steps_per_epoch = max(1, math.ceil(data.batches_per_epoch / recipe.train.grad_accum))
    wanted = recipe.min_train_steps()
    if wanted and steps_per_epoch * epochs < wanted:  # a small training set makes more passes (train.min_steps)
        epochs = wanted / steps_per_epoch
    if recipe.train.eval_every is None:
        evaluations = math.ceil(epochs) + 1  # every epoch's end, then the best model once more (train.py)
    else:
        evaluations = math.ceil(steps_per_epoch * epochs / recipe.train.eval_every) + 1
    return Workload(train_tokens=data.train_tokens, epochs=epochs, padding_fraction=data.padding_fraction,
                    mean_sequence=data.mean_sequence, eval_tokens=data.eval_tokens, evaluations=evaluations,
                    prediction_tokens=data.mean_tokens, batches_per_epoch=data.batches_per_epoch,
                    grad_accum=recipe.train.grad_accum, teacher_flops=teacher_flops(recipe, data))


def teacher_flops(recipe: Recipe, data: DataProfile) -> float:
    """train.distill: each teacher's forward pass over the training split, at its own size (its config.json).

    Raises the same one-line error as training when a teacher cannot be found."""
    if not recipe.train.distill.teachers:
        return 0.0
    from slingshot.distill import teacher_model_path

    return sum(forward_flops_per_token(model_spec(str(teacher_model_path(teacher, recipe))), data.mean_sequence)
               * data.train_tokens for teacher in recipe.train.distill.teachers)
