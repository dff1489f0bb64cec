"""Advice from a plan: the change that makes a setup fit, and a ranked short list of models for the task and budget."""

from __future__ import annotations

from dataclasses import dataclass

from slingshot.plan.catalogue import ModelSpec, load_catalogue
from slingshot.plan.estimate import Setup, memory_estimate
from slingshot.plan.planner import METHODS, Plan, plan_method, setup_for
from slingshot.recipe import Recipe

# Encoders read the whole text in both directions, which is what labelling a text needs; the GLUE figures on
# their cards are for exactly this. Decoders can classify too (a head on the last token) at many times the cost.
# Task generation trains causal LMs only (AutoModelForCausalLM) and task seq2seq encoder-decoders only.
KIND_ORDER = {"classification": ("encoder", "decoder", "seq2seq"), "regression": ("encoder", "decoder", "seq2seq"),
              "generation": ("decoder",), "seq2seq": ("seq2seq",)}
SMALLEST_TOKENS_PER_BATCH = 128


@dataclass
class Fix:
    """One change to the recipe and the peak memory it leads to."""

    change: str  # as a --set override, e.g. "train.method=lora"
    reason: str
    total_mb: float
    fits: bool


@dataclass
class Suggestion:
    """A catalogue model that suits the task, with the cheapest method that fits, and why."""

    rank: int
    model: str
    method: str
    parameters: int
    peak_memory_mb: float
    train_time_s: float
    train_cost_usd: float
    reason: str


def fixes(plan: Plan, recipe: Recipe) -> list[Fix]:
    """Changes that make the chosen setup fit, gentlest first (same model and method before anything else)."""
    chosen = plan.chosen_plan.setup
    limit = plan.memory_limit_mb
    spec = plan.model

    def what_if(method: str, **changes) -> Setup:
        return setup_for(recipe, spec, plan.hardware, plan.data, method, **changes)

    candidates: list[tuple[str, str, Setup]] = []
    if not chosen.gradient_checkpointing:
        candidates.append(("train.gradient_checkpointing=true", "recompute activations in backward (~1/3 slower)",
                           what_if(chosen.method, gradient_checkpointing=True)))
    if chosen.method == "full" and not chosen.frozen_embeddings:
        candidates.append(("train.freeze_embeddings=true", "no gradient or AdamW state for the input token table",
                           what_if("full", frozen_embeddings=True)))
    if chosen.method == "full":
        candidates.append(("train.method=lora", "train low-rank adapters; the frozen base gets no gradients",
                           what_if("lora")))
        candidates.append(("train.method=lora train.gradient_checkpointing=true", "LoRA and recomputed activations",
                           what_if("lora", gradient_checkpointing=True)))
    if chosen.method != "qlora" and plan.hardware.device == "cuda":
        candidates.append(("train.method=qlora", "LoRA on 4-bit base weights (about 0.5 bytes per parameter)",
                           what_if("qlora")))
    found = []
    for change, reason, setup in candidates:
        total = memory_estimate(spec, setup).total_mb
        found.append(Fix(change, reason, round(total, 1), total <= limit))
    batch_fix = _smaller_batch(plan, recipe)
    if batch_fix is not None:
        found.append(batch_fix)
    smaller = _smaller_model(plan, recipe)
    if smaller is not None:
        found.append(smaller)
    fitting = [fix for fix in found if fix.fits]
    return fitting[:4] if fitting else sorted(found, key=lambda fix: fix.total_mb)[:2]


def _smaller_batch(plan: Plan, recipe: Recipe) -> Fix | None:
    """The largest halving of train.tokens_per_batch that fits (activations shrink with it; weights do not)."""
    tokens = recipe.train.tokens_per_batch // 2
    while tokens >= SMALLEST_TOKENS_PER_BATCH:
        setup = setup_for(recipe, plan.model, plan.hardware, plan.data, plan.chosen, tokens_per_batch=tokens,
                          longest_sequence=min(plan.data.longest_sequence, tokens))
        total = memory_estimate(plan.model, setup).total_mb
        if total <= plan.memory_limit_mb:
            accumulate = max(1, recipe.train.tokens_per_batch // tokens) * recipe.train.grad_accum
            return Fix(f"train.tokens_per_batch={tokens} train.grad_accum={accumulate}",
                       "smaller batches, accumulated to the same optimizer step", round(total, 1), True)
        tokens //= 2
    return None


def _smaller_model(plan: Plan, recipe: Recipe) -> Fix | None:
    """The largest catalogue model of the same kind, suited to the task, that fits with the chosen method."""
    best = None
    for spec in load_catalogue():
        if spec.kind != plan.model.kind or spec.parameters >= plan.model.parameters or plan.task not in spec.tasks:
            continue
        setup = setup_for(recipe, spec, plan.hardware, plan.data, plan.chosen)
        total = memory_estimate(spec, setup).total_mb
        if total <= plan.memory_limit_mb and (best is None or spec.parameters > best[0].parameters):
            best = (spec, total)
    if best is None:
        return None
    spec, total = best
    return Fix(f"model.name={spec.id}", f"a smaller {spec.kind} ({_millions(spec.parameters)} parameters)",
               round(total, 1), True)


def shortlist(recipe: Recipe, plan: Plan) -> list[Suggestion]:
    """Catalogue models for the task ranked for this hardware and budget: each with the cheapest method that fits
    memory, plan.max_train_time_s and plan.budget_usd; encoders first for labelling tasks, then larger first."""
    budget = recipe.plan.budget_usd
    max_time = recipe.plan.max_train_time_s
    kinds = KIND_ORDER.get(plan.task, ("encoder", "decoder", "seq2seq"))
    options = []
    for spec in load_catalogue():
        if plan.task not in spec.tasks or spec.kind not in kinds:
            continue
        for method in METHODS:
            setup = setup_for(recipe, spec, plan.hardware, plan.data, method)
            method_plan = plan_method(spec, setup, plan.workload, plan.hardware, plan.price_per_hour_usd,
                                      plan.memory_limit_mb)
            seconds = method_plan.time.train_time_s + method_plan.time.eval_time_s + method_plan.time.teacher_time_s
            within = (max_time is None or seconds <= max_time) and (budget is None or method_plan.train_cost_usd <= budget)
            if method_plan.fits and method_plan.available and within:
                options.append((spec, method_plan, seconds))
                break
    options.sort(key=lambda option: (kinds.index(option[0].kind), -option[0].parameters))
    suggestions = []
    for rank, (spec, method_plan, seconds) in enumerate(options[: recipe.plan.shortlist_size], start=1):
        suggestions.append(Suggestion(
            rank=rank, model=spec.id, method=method_plan.method, parameters=spec.parameters,
            peak_memory_mb=round(method_plan.memory.total_mb, 1), train_time_s=round(seconds, 1),
            train_cost_usd=round(method_plan.train_cost_usd, 4), reason=_reason(spec, method_plan, seconds, plan),
        ))
    return suggestions


def _reason(spec: ModelSpec, method_plan, seconds: float, plan: Plan) -> str:
    parts = [f"{spec.kind}, {_millions(spec.parameters)}",
             f"{method_plan.method} fits ({method_plan.memory.total_mb / 1024:.1f} of {plan.memory_limit_mb / 1024:.1f} GB)",
             f"~{format_duration(seconds)}, ${method_plan.train_cost_usd:.4f}"]
    published = next((b for b in spec.benchmarks if b["benchmark"] in ("SST-2", "MNLI", "MNLI-m", "MMLU")), None)
    if published:
        parts.append(f"{published['benchmark']} {published['value']} ({published['setting']}, card)")
    if spec.license:
        parts.append(f"license {spec.license}")
    return "; ".join(parts)


def _millions(parameters: int) -> str:
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
