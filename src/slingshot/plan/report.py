"""A plan as a person reads it: Rich tables and short lines, printed by `slingshot plan` and `slingshot run`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from slingshot.plan.advice import format_duration
from slingshot.plan.catalogue import load_catalogue
from slingshot.plan.planner import Plan


def gb(megabytes: float) -> str:
    if megabytes < 1024:
        return f"{megabytes:.0f} MB"
    return f"{megabytes / 1024:.2f} GB" if megabytes < 10 * 1024 else f"{megabytes / 1024:.1f} GB"


def usd(value: float) -> str:
    return f"${value:.6f}" if value < 0.01 else f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def print_plan(plan: Plan, console: Console, *, brief: bool = False) -> None:
    """The whole plan; brief=True (before `slingshot run`) leaves out the short list."""
    spec, hardware, data = plan.model, plan.hardware, plan.data
    console.print(f"[bold]plan[/bold] {plan.recipe_name}: {spec.id} ({spec.kind}, {parameters(spec.parameters)} "
                  f"parameters) for {plan.task}", highlight=False)
    console.print(f"hardware: {describe_hardware(plan)}", highlight=False)
    steps = plan.workload.optimizer_steps
    console.print(f"data: {data.train_rows:,} training rows, {data.train_tokens:,} tokens per epoch (counted with "
                  f"{data.counted_with}), epochs {plan.workload.epochs:.3g} ({steps:,} optimizer steps), mean "
                  f"{data.mean_tokens:.0f} tokens, longest {data.longest_sequence}, padding "
                  f"{data.padding_fraction:.1%}", highlight=False)
    # one column per method, one row per quantity: readable in 80 columns
    table = Table(title="estimates")
    table.add_column("")
    for name in plan.methods:
        table.add_column(name + (" (recipe)" if name == plan.chosen else ""), justify="right")
    teachers = "  + teachers' pass, before training"
    rows: dict[str, list[str]] = {key: [] for key in (
        "fits", "peak memory", "  weights (+16-bit copies)", "  gradients + AdamW", "  activations",
        "  runtime, libraries, slack", "training time (+ eval)", *([teachers] if plan.workload.teacher_flops else []),
        "training cost", "per 1,000 predictions")}
    for method in plan.methods.values():
        memory, timing = method.memory, method.time
        rows["fits"].append("n/a" if not method.available else ("yes" if method.fits else "[red]NO[/red]"))
        rows["peak memory"].append(gb(memory.total_mb))
        rows["  weights (+16-bit copies)"].append(gb(memory.weights_mb + memory.low_precision_copies_mb))
        rows["  gradients + AdamW"].append(gb(memory.gradients_mb + memory.optimizer_mb))
        rows["  activations"].append(gb(memory.activations_mb))
        rows["  runtime, libraries, slack"].append(gb(memory.runtime_mb))
        rows["training time (+ eval)"].append(format_duration(timing.train_time_s + timing.eval_time_s))
        if plan.workload.teacher_flops:
            rows[teachers].append(format_duration(timing.teacher_time_s))
        rows["training cost"].append(usd(method.train_cost_usd))
        rows["per 1,000 predictions"].append(usd(method.cost_per_1000_predictions_usd))
    for label, values in rows.items():
        table.add_row(label, *values)
    console.print(table)
    chosen = plan.chosen_plan
    console.print(f"limit: {gb(plan.memory_limit_mb)} ({'GPU memory' if hardware.device == 'cuda' else 'RAM'} x "
                  f"usable fraction); precision {chosen.setup.precision}; "
                  f"{'gradient checkpointing; ' if chosen.setup.gradient_checkpointing else ''}"
                  f"{'' if hardware.device == 'cuda' else allocator_note(chosen.setup.pooled_allocator)}"
                  f"{chosen.time.train_gflops_per_s:,.0f} GFLOP/s assumed "
                  f"({'calibrated here' if hardware.measured else 'datasheet x assumed efficiency'})", highlight=False)
    for name, method in plan.methods.items():
        if method.note:
            console.print(f"note: {name}: {method.note}", highlight=False)
    if not plan.fits:
        print_warning(plan, console)
    if not brief:
        print_shortlist(plan, console)


def describe_hardware(plan: Plan) -> str:
    hardware = plan.hardware
    parts = [hardware.name]
    if hardware.accelerator:
        parts.append(f"{gb(hardware.accelerator_memory_mb or 0)} GPU memory")
    parts.append(f"{hardware.cores} cores, {gb(hardware.ram_mb)} RAM")
    parts.append(f"{usd(plan.price_per_hour_usd)}/h")
    parts.append("measured" if hardware.measured else "profile")
    return ", ".join(parts)


def print_warning(plan: Plan, console: Console) -> None:
    chosen = plan.chosen_plan
    if not chosen.available:
        console.print(f"[red]warning:[/red] {plan.chosen} cannot run here: {chosen.note}", highlight=False)
    else:
        console.print(f"[red]warning:[/red] {plan.chosen} training of {plan.model.short()} needs about "
                      f"{gb(chosen.memory.total_mb)}, over the {gb(plan.memory_limit_mb)} usable here", highlight=False)
    for fix in plan.fixes:
        verdict = "fits" if fix.fits else "still too big"
        console.print(f"  try --set {fix.change.replace(' ', ' --set ')}: {fix.reason} -> {gb(fix.total_mb)} "
                      f"({verdict})", highlight=False)


def print_shortlist(plan: Plan, console: Console) -> None:
    if not plan.shortlist:
        console.print("short list: no catalogue model fits this hardware, time limit and budget", highlight=False)
        return
    table = Table(title="short list for this task, hardware and budget (plan.max_train_time_s, plan.budget_usd)")
    for column in ("#", "model", "method", "why"):
        table.add_column(column)
    for suggestion in plan.shortlist:
        table.add_row(str(suggestion.rank), suggestion.model, suggestion.method, suggestion.reason)
    console.print(table)


def print_catalogue(console: Console) -> None:
    table = Table(title="model catalogue (facts from each model card)")
    for column in ("model", "kind", "parameters", "layers x hidden", "context", "license", "tasks", "published"):
        table.add_column(column)
    for spec in load_catalogue():
        published = "; ".join(f"{b['benchmark']} {b['value']}" for b in spec.benchmarks)
        table.add_row(spec.id, spec.kind, parameters(spec.parameters), f"{spec.layers} x {spec.hidden}",
                      f"{spec.context_length:,}", spec.license or "", ", ".join(spec.tasks), published)
    console.print(table)


def parameters(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def allocator_note(pooled: bool) -> str:
    """The CPU allocator the memory estimate assumes: glibc's heap fragments, tcmalloc and jemalloc hardly do."""
    return ("tcmalloc/jemalloc heap; " if pooled
            else "glibc heap (+1 batch of activations; install libtcmalloc-minimal4 for less); ")
