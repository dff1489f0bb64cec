"""The `slingshot` command: parses arguments, calls the library, renders with Rich. No logic of its own.

One error boundary in `main()` turns every SlingshotError into two lines (error, hint) and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from slingshot.errors import SlingshotError

app = typer.Typer(
    name="slingshot",
    help="Fine-tune small models that beat big ones on your task: offline first, measured.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file (see examples/sst2/recipe.yaml).", show_default=False)]
RunArg = Annotated[Path, typer.Argument(help="Run directory written by `slingshot train`, e.g. runs/sst2.", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field: --set train.lr=5e-5 (repeatable).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a finished or interrupted run of the same name.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
HardwareOpt = Annotated[str | None, typer.Option(
    "--hardware", help="Plan for this machine (auto, the default) or a profile: cpu-2core, cpu-8core, t4-16gb, "
    "l4-24gb, a10g-24gb, a100-40gb, a100-80gb, h100-80gb (sets plan.hardware).", show_default=False)]


def _print_version(value: bool) -> None:
    if value:
        from slingshot import __version__

        out.print(f"slingshot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Fine-tune small models that beat big ones on your task: offline first, measured."""


def _recipe(path: Path, overrides: list[str] | None):
    from slingshot.recipe import load_recipe

    return load_recipe(path, overrides or [])


# ------------------------------------------------------------------------------------------------ inspect


@app.command()
def inspect(recipe: RecipeArg, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Check the recipe's data: rows, label balance, token lengths, empties, duplicates, leakage, unseen labels.

    Example: slingshot inspect examples/sst2/recipe.yaml
    """
    from slingshot.checks import inspect_data

    report = inspect_data(_recipe(recipe, set_))
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _render_inspect(report)
    if report.errors:
        raise typer.Exit(1)


def _render_inspect(report) -> None:
    table = Table(title=f"data ({report.task}, tokens by {report.model})")
    for column in ("split", "rows", "labels", "tokens p50/p95/max", "truncated", "source"):
        table.add_column(column)
    for split, r in report.splits.items():
        if r.labels is not None:
            total = max(sum(r.labels.values()), 1)
            labels = ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in r.labels.items())
        else:
            labels = ", ".join(f"{k} {v:.3g}" for k, v in (r.label_stats or {}).items())
        lengths = r.token_lengths
        table.add_row(split, str(r.rows), labels, f"{lengths.get('p50')}/{lengths.get('p95')}/{lengths.get('max')}",
                      str(r.truncated), r.source)
    out.print(table)
    if not report.problems:
        out.print("no problems found")
    for problem in report.problems:
        style = "red" if problem.severity == "error" else "yellow"
        out.print(f"[{style}]{problem.severity}[/{style}] {problem.split}: {problem.check}: {problem.count} "
                  f"(e.g. {problem.example})", highlight=False)


# ------------------------------------------------------------------------------------------------ train / run


@app.command()
def train(recipe: RecipeArg, set_: SetOpt = None, overwrite: OverwriteOpt = False, resume: ResumeOpt = False) -> None:
    """Fine-tune the recipe's model into runs/<name>/ (model, metrics, predictions, log, summary).

    Example: slingshot train examples/sst2/recipe.yaml --set train.epochs=1
    """
    from slingshot.train import train as run_training

    result = run_training(_recipe(recipe, set_), overwrite=overwrite, resume=resume)
    _render_result(result, recipe)


@app.command()
def run(
    recipe: RecipeArg,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Train even when the plan says it will not fit.")] = False,
) -> None:
    """Plan, inspect the data, train, evaluate, and print the results: the main job in one command.

    The plan (memory, time, cost) comes first; a run that will not fit is refused before anything is loaded,
    with the change that would fit, unless --force.

    Example: slingshot run examples/sst2/recipe.yaml
    """
    from slingshot.checks import inspect_data
    from slingshot.plan import make_plan
    from slingshot.plan.report import print_plan
    from slingshot.train import train as run_training

    loaded = _recipe(recipe, set_)
    run_plan = make_plan(loaded, "auto", with_shortlist=False)  # the machine it runs on, whatever plan.hardware says
    print_plan(run_plan, out, brief=True)
    if not run_plan.fits and not force:
        fix = next((f for f in run_plan.fixes if f.fits), None)
        raise SlingshotError(
            f"the plan says this run will not fit: {run_plan.chosen} training of {run_plan.model.id} needs about "
            f"{run_plan.chosen_plan.memory.total_mb / 1024:.1f} GB, {run_plan.memory_limit_mb / 1024:.1f} GB usable",
            (f"--set {fix.change.replace(' ', ' --set ')} ({fix.reason}), " if fix else "")
            + "or pass --force to train anyway",
        )
    report = inspect_data(loaded)
    _render_inspect(report)
    if report.errors:
        first = report.errors[0]
        raise SlingshotError(f"data check failed: {first.split}: {first.check} ({first.example})",
                             "fix the data (see the report above), then run again")
    result = run_training(loaded, overwrite=overwrite, resume=resume)
    _render_result(result, recipe)
    if loaded.compare.baselines and not result.interrupted:
        _compare(str(result.run.path), loaded.compare, force=overwrite)


def _render_result(result, recipe_path: Path) -> None:
    if result.interrupted:
        err.print(f"interrupted after step {result.summary['optimizer_steps']}; continue with: "
                  f"slingshot train {recipe_path} --resume")
        raise typer.Exit(130)
    _render_metrics(result.metrics.get("eval", {}), "eval")
    if "test" in result.metrics:
        _render_metrics(result.metrics["test"], "test")
    s = result.summary
    for split, count in s.get("skipped_empty_texts", {}).items():
        err.print(f"skipped {count} empty or whitespace texts in {split} (`slingshot inspect` shows where)")
    out.print(f"run: {s['run']}  (model in {s['run']}/model)")
    out.print(f"wall {s['wall_time_s']:.0f} s, {s['real_tokens_per_s']:,.0f} real tokens/s, padding "
              f"{s['padding_fraction']:.1%}, peak RSS {s['peak_rss_mb']:.0f} MB, est. cost ${s['estimated_cost_usd']:.4f}",
              highlight=False)


def _render_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=f"{title} metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if isinstance(value, float):
            table.add_row(name, f"{value:.4f}")
    out.print(table)
    per_class = metrics.get("per_class")
    if per_class:
        classes = Table(title=f"{title} per class")
        for column in ("class", "precision", "recall", "f1", "support"):
            classes.add_column(column, justify="right" if column != "class" else "left")
        for name, v in per_class.items():
            classes.add_row(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
        out.print(classes)
        matrix = Table(title="confusion matrix (rows: gold, columns: predicted)")
        matrix.add_column("")
        for name in metrics["labels"]:
            matrix.add_column(name, justify="right")
        for name, row in zip(metrics["labels"], metrics["confusion_matrix"]):
            matrix.add_row(name, *[str(v) for v in row])
        out.print(matrix)


# ------------------------------------------------------------------------------------------------ plan


@app.command()
def plan(recipe: RecipeArg, hardware: HardwareOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Before you spend: peak memory, training time and cost of the recipe for full, LoRA and QLoRA training on
    this machine (calibrated) or a named one, whether it fits and what would, and a ranked short list of models.

    Reads the model's config.json and the data; loads no weights. Exits 1 when the recipe's setup will not fit.

    Examples: slingshot plan examples/sst2/recipe.yaml
              slingshot plan examples/sst2/recipe.yaml --hardware a10g-24gb --set train.method=qlora
    """
    from slingshot.plan import make_plan
    from slingshot.plan.report import print_plan

    loaded = _recipe(recipe, (set_ or []) + ([f"plan.hardware={hardware}"] if hardware else []))
    result = make_plan(loaded)
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
    else:
        print_plan(result, out)
    if not result.fits:
        raise typer.Exit(1)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the model catalogue: size, shape, context, license, tasks and published figures, from the model cards.

    Example: slingshot models
    """
    from dataclasses import asdict

    from slingshot.plan.catalogue import load_catalogue
    from slingshot.plan.report import print_catalogue

    if as_json:
        out.print_json(json.dumps([asdict(spec) for spec in load_catalogue()]))
    else:
        print_catalogue(out)


# ------------------------------------------------------------------------------------------------ evaluate / predict


@app.command()
def evaluate(
    run_dir: RunArg,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled file to score (default: the run's eval split).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write metrics JSON here (never over an existing file).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a finished run on any labelled file with the run's columns.

    Example: slingshot evaluate runs/sst2 --data ../shared/datasets/sst2/dev.tsv
    """
    from slingshot.evaluate import evaluate_file, load_run

    loaded = load_run(str(run_dir))
    source = str(data) if data is not None else loaded.recipe.resolve_path(loaded.recipe.data.eval)
    if source is None:
        raise SlingshotError(f"run {run_dir} was evaluated on a held-out part of train; name a file to score",
                             "pass --data FILE")
    _refuse_existing(output)
    metrics, _, skipped = evaluate_file(loaded, source)
    if skipped.count:
        err.print(f"skipped {skipped.count} empty texts (e.g. {', '.join(skipped.examples)})")
    if output is not None:
        output.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(metrics))
    else:
        _render_metrics(metrics, str(source))


@app.command()
def predict(
    run_dir: RunArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.", show_default=False)] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="File of texts (the run's text column).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write predictions as JSONL here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict the label (with probability) or score of texts or of a file.

    Examples: slingshot predict runs/sst2 "a gripping, funny film"
              slingshot predict runs/sst2 --input new.csv --output predictions.jsonl
    """
    from slingshot.evaluate import load_run, predict_file, predict_texts

    if not texts and input_file is None:
        raise SlingshotError("nothing to predict", "give texts as arguments or --input FILE")
    _refuse_existing(output)
    loaded = load_run(str(run_dir))
    if input_file is not None:
        records, skipped = predict_file(loaded, str(input_file))
        if skipped.count:
            err.print(f"skipped {skipped.count} empty texts (e.g. {', '.join(skipped.examples)})")
    else:
        records = predict_texts(loaded, list(texts or []))
    if output is not None:
        with output.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        err.print(f"wrote {len(records)} predictions to {output}")
        return
    if as_json:
        for record in records:
            out.print(json.dumps(record, ensure_ascii=False), soft_wrap=True)
        return
    table = Table()
    table.add_column("text")
    table.add_column("prediction")
    table.add_column("probability" if loaded.recipe.task == "classification" else "", justify="right")
    for record in records:
        probability = f"{record['probability']:.3f}" if "probability" in record else ""
        prediction = record["predicted"] if isinstance(record["predicted"], str) else f"{record['predicted']:.4f}"
        table.add_row(record["text"][:80], prediction, probability)
    out.print(table)


def _refuse_existing(path: Path | None) -> None:
    if path is not None and path.exists():
        raise SlingshotError(f"{path} already exists; it is not overwritten", "choose another --output path or delete it")


# ------------------------------------------------------------------------------------------------ compare


@app.command()
def compare(
    run_dir: RunArg,
    baseline: Annotated[list[str] | None, typer.Option(
        "--baseline", help="majority, embedding, llm, or another run's directory (repeatable). "
        "Default: the recipe's compare.baselines.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled file to compare on (default: --split).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="eval or test split of the run's data.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Compare on a seeded sample of N examples.")] = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the run's existing comparison.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare a fine-tuned run with baselines on the same examples: metrics with confidence intervals,
    McNemar tests, latency, cost per 1,000 predictions and a verdict. Writes comparison.json/.md into the run.

    Examples:
      slingshot compare runs/sst2 --baseline majority --baseline embedding
      slingshot compare runs/sst2 --baseline llm --set compare.llm.model=gpt-4o-mini --limit 200
      slingshot compare runs/sst2 --baseline llm --set compare.llm.base_url=http://localhost:11434/v1 \\
          --set compare.llm.model=llama3.1:8b --set compare.shots=8
    """
    from slingshot.recipe import apply_overrides, recipe_from_dict
    from slingshot.rundir import find_run

    run_path = find_run(str(run_dir))
    raw = yaml.safe_load(run_path.recipe.read_text(encoding="utf-8")) if run_path.recipe.is_file() else {}
    overrides = [item if item.startswith("compare.") else f"compare.{item}" for item in set_ or []]
    options = recipe_from_dict(apply_overrides(raw or {}, overrides), source=str(run_path.recipe)).compare
    updates: dict[str, Any] = {}
    if baseline:
        updates["baselines"] = baseline
    if split is not None:
        updates["split"] = split
    if limit is not None:
        updates["limit"] = limit
    options = options.model_validate({**options.model_dump(), **updates})
    _compare(str(run_path.path), options, data=str(data) if data else None, force=force, as_json=as_json)


def _compare(run_path: str, options, data: str | None = None, force: bool = False, as_json: bool = False) -> None:
    from slingshot.compare import compare_run

    done = {"count": 0}

    def on_llm_result(index: int, result) -> None:
        done["count"] += 1
        if done["count"] % 100 == 0:
            err.print(f"  llm answers: {done['count']}", highlight=False)

    comparison = compare_run(run_path, options, data_path=data, force=force, on_llm_result=on_llm_result,
                             log=lambda message: err.print(message, highlight=False))
    if as_json:
        out.print_json(json.dumps(comparison.report))
        return
    out.print(Markdown(comparison.markdown))
    out.print(f"written: {comparison.paths['json']}, {comparison.paths['markdown'].name}, "
              f"{comparison.paths['disagreements'].name}", highlight=False)


# ------------------------------------------------------------------------------------------------ fields


@app.command()
def fields() -> None:
    """List every recipe field with its default and meaning.

    Example: slingshot fields
    """
    from slingshot.recipe import describe_fields

    table = Table(title="recipe fields")
    for column in ("field", "default", "meaning"):
        table.add_column(column)
    for name, default, description in describe_fields():
        table.add_row(name, default, description)
    out.print(table)


# ------------------------------------------------------------------------------------------------ entry point


def _quiet_libraries() -> None:
    """Library progress bars and load reports drown our own output; set at the CLI entry, never on import."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import datasets
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main() -> None:
    import click

    debug = "--debug" in sys.argv
    _quiet_libraries()
    try:
        code = app(standalone_mode=False)  # without standalone mode click returns typer.Exit codes
        if isinstance(code, int) and code:
            sys.exit(code)
    except SlingshotError as error:
        if debug:
            raise
        err.print(f"[red]error:[/red] {error.message}", highlight=False, soft_wrap=True)
        if error.hint:
            err.print(f"hint: {error.hint}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        err.print("interrupted")
        sys.exit(130)
    except Exception as error:  # an unexpected fault: one line, and how to see more
        if debug:
            raise
        err.print(f"[red]error:[/red] unexpected {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  highlight=False, soft_wrap=True)
        err.print("hint: rerun with --debug for the traceback, and report it if it is a bug", highlight=False)
        sys.exit(1)
