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
def run(recipe: RecipeArg, set_: SetOpt = None, overwrite: OverwriteOpt = False, resume: ResumeOpt = False) -> None:
    """Inspect the data, train, evaluate, and print the results: the main job in one command.

    Example: slingshot run examples/sst2/recipe.yaml
    """
    from slingshot.checks import inspect_data
    from slingshot.train import train as run_training

    loaded = _recipe(recipe, set_)
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


# ------------------------------------------------------------------------------------------------ curve


@app.command()
def curve(
    recipe: RecipeArg,
    sizes: Annotated[str | None, typer.Option("--sizes", help="Comma-separated sizes: per class up to "
                                              "curve.per_class_up_to (64), totals beyond, and 'all'.")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="Comma-separated methods: fewshot, full, lora.")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per point (0, 1, ...).")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="'Enough' = within this of the reference "
                                                    "(0.01 = 1 point).")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Reference score: a number, or a comparison.json "
                                                 "(or its run folder), optionally #system.")] = None,
    folder: Annotated[Path | None, typer.Option("--out", help="Sweep folder (default: <output.dir>/<name>-curve).")] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete the sweep's finished points and start over.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Learning curve: train each method at each data size over several seeds on nested, stratified samples,
    score on the same eval set; writes curve.json/.md/.png and says how much data is enough. An interrupted
    sweep resumes where it stopped when run again.

    Examples:
      slingshot curve examples/sst2/recipe.yaml --sizes 8,16,32,64,256,1000,all --methods fewshot,full --seeds 3
      slingshot curve examples/sst2/recipe.yaml --sizes 8,64 --methods fewshot --baseline runs/sst2/comparison.json#llm
    """
    from slingshot.curve import run_curve

    overrides = list(set_ or [])
    for name, value in (("sizes", sizes), ("methods", methods)):
        if value is not None:
            overrides.append(f"curve.{name}=[{','.join(item.strip() for item in value.split(','))}]")
    for name, value in (("seeds", seeds), ("tolerance", tolerance)):
        if value is not None:
            overrides.append(f"curve.{name}={value}")
    if baseline is not None:
        overrides.append(f"curve.baseline='{baseline}'")
    loaded = _recipe(recipe, overrides)
    with _CurveProgress(enabled=not as_json) as progress:
        result = run_curve(loaded, out=folder, overwrite=overwrite, on_event=progress.event)
    if result.interrupted:
        err.print(f"interrupted; finished points are kept in {result.folder}/points.jsonl. Continue with the same "
                  "command.")
        raise typer.Exit(130)
    if as_json:
        out.print_json(json.dumps(result.summary))
        return
    from slingshot.curve import render_markdown

    out.print(Markdown(render_markdown(result.summary)))
    out.print(f"written: {result.folder}/curve.json, curve.md, curve.png, points.jsonl", highlight=False)


class _CurveProgress:
    """A bar over the whole sweep (points done of total, ETA) and one line per finished point."""

    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = enabled
        self.progress = Progress(TextColumn("[bold]curve"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeRemainingColumn(), console=err,
                                 disable=not enabled)
        self.task_id = None

    def __enter__(self) -> "_CurveProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def event(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "plan":
            self.task_id = self.progress.add_task("", total=info["total"], completed=info["done"])
            if info["done"] and self.enabled:
                err.print(f"resuming: {info['done']} of {info['total']} points already finished", highlight=False)
        elif kind == "start":
            size = f"{info['size']}/class" if info["per_class"] else info["size"]
            self.progress.update(self.task_id, description=f"{info['method']} {size} seed {info['seed']}")
        elif kind == "done":
            self.progress.advance(self.task_id)
            if self.enabled:
                size = f"{info['size']}/class" if info["per_class"] else info["size"]
                self.progress.console.print(
                    f"{info['method']:>7} {size:>9} seed {info['seed']}: {info['metric']:.4f} "
                    f"({info['examples']} examples, {info['train_time_s']:.0f} s training)", highlight=False)


# ------------------------------------------------------------------------------------------------ docs2qa


@app.command()
def docs2qa(
    inputs: Annotated[list[str], typer.Argument(help="Folders, files or quoted globs of PDF, .txt, .md and .html "
                                                     "documents.", show_default=False)],
    output: Annotated[Path, typer.Option("--out", help="Folder to write the question-answer set into.",
                                      show_default=False)],
    recipe: Annotated[Path | None, typer.Option("--recipe", help="YAML file with a docs2qa: section "
                                                "(`slingshot fields` lists its fields).")] = None,
    generator: Annotated[str | None, typer.Option("--generator", help="offline (extractive, no LLM) or teacher "
                                                  "(an OpenAI-compatible LLM, set in docs2qa.teacher.llm).")] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished docs2qa output in --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn a folder of documents into a question-answer training set, each pair traced to its document and page.

    Writes train/eval JSONL (whole documents held out for eval), SQuAD v1.1 JSON, chat JSONL and a report.

    Examples: slingshot docs2qa ../shared/datasets/pdf_docs --out data/nist-qa
              slingshot docs2qa "manuals/**/*.pdf" --out data/qa --generator teacher --set docs2qa.teacher.llm.model=gpt-4o-mini
              slingshot docs2qa docs/ --recipe qa.yaml --out data/qa --set docs2qa.chunk.max_tokens=384
    """
    from slingshot.docs2qa.pipeline import run_docs2qa
    from slingshot.recipe import apply_overrides, recipe_from_dict

    overrides = list(set_ or []) + ([f"docs2qa.generator={generator}"] if generator else [])
    settings = (_recipe(recipe, overrides) if recipe is not None
                else recipe_from_dict(apply_overrides({}, overrides), source="--set")).docs2qa
    report = run_docs2qa(inputs, output, settings, overwrite=overwrite,
                         progress=None if as_json else lambda message: err.print(message, highlight=False))
    if as_json:
        out.print_json(json.dumps(report))
        return
    _render_docs2qa(report, output)


def _render_docs2qa(report: dict[str, Any], folder: Path) -> None:
    table = Table(title=f"docs2qa ({report['generator']} generator)")
    for column in ("document", "pages", "chunks", "pairs kept", "split"):
        table.add_column(column, justify="left" if column in ("document", "split") else "right")
    for name, row in report["per_document"].items():
        table.add_row(name, str(row["pages"]), str(row["chunks"]), str(row["pairs_kept"]), row["split"])
    out.print(table)
    for item in report["skipped_files"]:
        err.print(f"skipped {item['file']}: {item['reason']}", highlight=False, soft_wrap=True)
    pairs = report["pairs"]
    rejected = ", ".join(f"{reason} {count}" for reason, count in pairs["rejected"].items()) or "none"
    out.print(f"pairs: {pairs['kept']} kept of {pairs['generated']} (train {pairs['train']}, eval {pairs['eval']}); "
                  f"rejected: {rejected}", highlight=False)
    out.print(f"wrote {folder}/ (train.jsonl, eval.jsonl, squad/, chat/, report.json) in "
                  f"{report['wall_time_s']:.0f} s", highlight=False)


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
