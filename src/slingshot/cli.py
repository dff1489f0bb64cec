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
BackendOpt = Annotated[str, typer.Option("--backend", help="torch, or onnx (after `slingshot export RUN --onnx`).")]
HardwareOpt = Annotated[str | None, typer.Option(
    "--hardware", help="Plan for this machine (auto, the default) or a profile: cpu-2core, cpu-8core, t4-16gb, "
    "l4-24gb, a10g-24gb, a100-40gb, a100-80gb, h100-80gb (sets plan.hardware).", show_default=False)]


def _print_version(value: bool) -> None:
    if value:
        from slingshot import __version__
        from slingshot.allocator import preloaded

        out.print(f"slingshot {__version__} (memory allocator: {preloaded() or 'system'})")
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
        table.add_row(split, str(r.rows), labels, f"{lengths['p50']}/{lengths['p95']}/{lengths['max']}" if lengths else "-",
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
    if loaded.label.input is not None and loaded.data.train is None:
        # A recipe with unlabelled texts and no training data: the teacher labels them first (once; a labelled
        # folder that exists is reused, and a rerun after a failure asks the endpoint only what is missing).
        if loaded.labelled_path.is_file():
            err.print(f"training on the teacher labels in {loaded.labelled_path}", highlight=False)
        else:
            _label(loaded)
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
    if result.interrupted:
        return
    from slingshot.report import build_report
    from slingshot.rundir import write_json

    write_json(result.run.path / "inspection.json", report.to_dict())
    if loaded.compare.baselines:
        _compare(str(result.run.path), loaded.compare, force=overwrite)
    out.print(f"report: {build_report(str(result.run.path))}", highlight=False)


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
    for split, reasons in s.get("skipped_examples", {}).items():
        err.print(f"skipped in {split}: {_reasons(reasons)} (`slingshot inspect` shows where)")
    out.print(f"run: {s['run']}  (model in {s['run']}/model)")
    out.print(f"wall {s['wall_time_s']:.0f} s, {s['real_tokens_per_s']:,.0f} real tokens/s, padding "
              f"{s['padding_fraction']:.1%}, peak RSS {s['peak_rss_mb']:.0f} MB, est. cost ${s['estimated_cost_usd']:.4f}",
              highlight=False)


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{count} ({reason})" for reason, count in reasons.items())


def _render_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=f"{title} metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if isinstance(value, float):
            table.add_row(name, f"{value:.4f}")
    out.print(table)
    if "similarity" in metrics:
        _render_similarity(metrics["similarity"], title)
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


def _render_similarity(report: dict[str, Any], title: str) -> None:
    thresholds = report["thresholds"]
    table = Table(title=f"{title} answer similarity ({report['model'].split('/')[-1]}, {report['pairs']} pairs, "
                        f"mean {report['mean']:.3f}, median {report['median']:.3f})")
    for column in ("band", "cosine", "answers", "share"):
        table.add_column(column, justify="left" if column in ("band", "cosine") else "right")
    ranges = {"acceptable": f">= {thresholds['acceptable']:g}",
              "borderline": f"{thresholds['borderline']:g} to {thresholds['acceptable']:g}",
              "unacceptable": f"< {thresholds['borderline']:g}"}
    for band, count in report["counts"].items():
        table.add_row(band, ranges[band], str(count), f"{report['shares'][band]:.1%}")
    out.print(table)
    if report["worst"]:
        worst = Table(title="lowest similarity")
        for column in ("row", "similarity", "prediction", "reference"):
            worst.add_column(column)
        for pair in report["worst"]:
            worst.add_row(str(pair["row"]), f"{pair['similarity']:.3f}", pair["prediction"][:60] or "(no answer)",
                          " | ".join(pair["reference"])[:60])
        out.print(worst)
    if "histogram" in report:
        out.print(f"histogram: {report['histogram']}")
# ------------------------------------------------------------------------------------------------ plan


@app.command()
def plan(recipe: RecipeArg, hardware: HardwareOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Before you spend: peak memory, training time and cost of the recipe for full, LoRA and QLoRA training on
    this machine (calibrated) or a named one, whether it fits and what would, and a ranked short list of models.

    Reads the model's config.json and the data; loads no weights. Exits 1 when the recipe's setup will not fit.

    Examples:

    \b
      slingshot plan examples/sst2/recipe.yaml
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
    run_dir: Annotated[Path | None, typer.Argument(help="Run directory written by `slingshot train`, e.g. runs/sst2.",
                                                   show_default=False)] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled file to score (default: the run's eval split).")] = None,
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Score answers without a run: JSONL with prediction and reference columns "
        "(a reference may be a list).")] = None,
    histogram: Annotated[Path | None, typer.Option(
        "--histogram", help="Write the answer-similarity histogram PNG here (text answers only).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write metrics JSON here (never over an existing file).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a finished run on any labelled file with the run's columns, or score answers against references.

    Examples:

    \b
      slingshot evaluate runs/sst2 --data ../shared/datasets/sst2/dev.tsv
      slingshot evaluate runs/policyqa --data held_out.json --histogram similarity.png
      slingshot evaluate --predictions answers.jsonl --histogram similarity.png
    """
    from slingshot.evaluate import evaluate_file, load_run

    _refuse_existing(output)
    _refuse_existing(histogram, "--histogram")
    if predictions is not None:
        if run_dir is not None or data is not None:
            raise SlingshotError("--predictions scores a file of answers on its own; it takes no run or --data",
                                 "drop the run directory and --data, or drop --predictions")
        metrics = _score_predictions(predictions, histogram)
    else:
        if run_dir is None:
            raise SlingshotError("nothing to evaluate", "give a run directory, or --predictions FILE")
        loaded = load_run(str(run_dir))
        source = str(data) if data is not None else loaded.recipe.resolve_path(loaded.recipe.data.eval)
        if source is None:
            raise SlingshotError(f"run {run_dir} was evaluated on a held-out part of train; name a file to score",
                                 "pass --data FILE")
        metrics, _, skipped = evaluate_file(loaded, source, histogram)
        if skipped.reasons:
            err.print(f"skipped {_reasons(skipped.reasons)} (e.g. {', '.join(skipped.examples)})")
        elif skipped.count:
            err.print(f"skipped {skipped.count} empty texts (e.g. {', '.join(skipped.examples)})")
        data = Path(source)
    if output is not None:
        output.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(metrics))
    else:
        _render_metrics(metrics, str(data or predictions))


def _score_predictions(path: Path, histogram: Path | None) -> dict[str, Any]:
    """Answer similarity (and EM/F1, which need no model) of a prediction/reference file."""
    from slingshot.metrics import qa_metrics
    from slingshot.recipe import SimilaritySection
    from slingshot.similarity import answer_similarity, read_prediction_pairs

    answers, references, lines = read_prediction_pairs(str(path))
    metrics = qa_metrics(answers, references)
    metrics["similarity"], _ = answer_similarity(answers, references, SimilaritySection(), histogram=histogram,
                                                 rows=lines, title=path.name)
    return metrics


@app.command()
def predict(
    run_dir: RunArg,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.", show_default=False)] = None,
    question: Annotated[str | None, typer.Option("--question", help="Question to answer (extractive_qa runs).")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Text the answer is taken from (with --question).")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="File of texts (the run's text column), of "
                                                     "question/context records for extractive_qa, or of chat "
                                                     "messages / prompts for generation and seq2seq.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="Prompt to answer (generation and seq2seq "
                                                     "runs; repeatable).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Longest answer in tokens (default: "
                                                       "the recipe's generation.max_new_tokens).")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="0 = greedy; above 0 samples (default: "
                                                      "the recipe's).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass, with --temperature > 0.")] = None,
    num_beams: Annotated[int | None, typer.Option("--num-beams", help="Beam search width; 1 = greedy (default: the "
                                                  "recipe's generation.num_beams).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write predictions as JSONL here.")] = None,
    backend: BackendOpt = "torch",
    as_json: JsonOpt = False,
) -> None:
    """Predict the label (with probability) or score of texts, the answer to a question, a generated answer to a
    prompt, or those of a file.

    Examples:

    \b
      slingshot predict runs/sst2 "a gripping, funny film"
      slingshot predict runs/sst2 --input new.csv --output predictions.jsonl
      slingshot predict runs/policyqa --question "Do they sell my data?" --context "We never sell ..."
      slingshot predict runs/support-qa --prompt "How do I reset my password?" --max-new-tokens 64
      slingshot predict runs/flan-qa --prompt "What does IT stand for?" --num-beams 4
    """
    from slingshot.evaluate import load_run, predict_answers, predict_file, predict_texts

    if (question is None) != (context is None):
        raise SlingshotError("--question and --context go together", "give both, e.g. --question Q --context TEXT")
    if not texts and input_file is None and question is None and not prompt:
        raise SlingshotError("nothing to predict", "give texts as arguments, --question with --context, --prompt, "
                             "or --input FILE")
    _refuse_existing(output)
    loaded = load_run(str(run_dir))
    if loaded.recipe.task in GENERATING_TASKS or prompt:
        if backend != "torch" and loaded.recipe.task in GENERATING_TASKS:
            raise SlingshotError(f"run {run_dir} is a {loaded.recipe.task} run: it answers on PyTorch only "
                                 "(no ONNX export)", "drop --backend onnx")
        _predict_generation(loaded, run_dir, texts, question, prompt, input_file, output, as_json,
                            {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                             "num_beams": num_beams})
        return
    answers = loaded.recipe.task == "extractive_qa"
    if answers and texts:
        raise SlingshotError(f"run {run_dir} answers questions; it does not classify texts",
                             "use --question Q --context TEXT, or --input FILE of question/context records")
    if question is not None and not answers:
        raise SlingshotError(f"run {run_dir} is a {loaded.recipe.task} run; --question needs an extractive_qa run",
                             "give texts to classify instead")
    if input_file is not None:
        records, skipped = predict_file(loaded, str(input_file), backend=backend)
        if skipped.reasons:
            err.print(f"skipped {_reasons(skipped.reasons)} (e.g. {', '.join(skipped.examples)})")
        elif skipped.count:
            err.print(f"skipped {skipped.count} empty texts (e.g. {', '.join(skipped.examples)})")
    elif question is not None:
        records = predict_answers(loaded, [question], [context or ""], backend=backend)
    else:
        records = predict_texts(loaded, list(texts or []), backend=backend)
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
    if answers:
        table = Table()
        for column in ("question", "answer", "score"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for record in records:
            score = f"{record['score']:.2f}" if record["score"] is not None else ""
            table.add_row(record["question"][:60], record["predicted"] or "(no answer found)", score)
        out.print(table)
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


GENERATING_TASKS = ("generation", "seq2seq")  # runs that write answers to prompts


def _predict_generation(loaded, run_dir: Path, texts, question, prompt, input_file, output, as_json, decoding) -> None:
    from slingshot.evaluate import predict_file, predict_prompts

    if loaded.recipe.task not in GENERATING_TASKS:
        raise SlingshotError(f"run {run_dir} is a {loaded.recipe.task} run; --prompt needs a generation or seq2seq run",
                             "give texts to classify, or --question with --context for extractive_qa")
    if texts or question is not None:
        raise SlingshotError(f"run {run_dir} writes answers to prompts", "use --prompt TEXT, or --input FILE")
    if input_file is not None:
        records, skipped = predict_file(loaded, str(input_file))
        if skipped.count:
            err.print(f"skipped {_reasons(skipped.reasons)} (e.g. {', '.join(skipped.examples)})")
    else:
        records = []
    if prompt:
        records += predict_prompts(loaded, list(prompt), **decoding)
    if output is not None or as_json:
        _write_records(records, output)
        return
    table = Table()
    for column in ("prompt", "answer", "stopped"):
        table.add_column(column)
    for record in records:
        table.add_row(record["prompt"][:60], record["predicted"] or "(empty)",
                      "eos" if record["stopped_at_eos"] else "max tokens")
    out.print(table)


def _write_records(records: list[dict], output: Path | None) -> None:
    """JSONL into `output`, or one JSON object a line on stdout."""
    if output is None:
        for record in records:
            out.print(json.dumps(record, ensure_ascii=False), soft_wrap=True)
        return
    with output.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    err.print(f"wrote {len(records)} predictions to {output}")


def _refuse_existing(path: Path | None, option: str = "--output") -> None:
    if path is not None and path.exists():
        raise SlingshotError(f"{path} already exists; it is not overwritten", f"choose another {option} path or delete it")


# ------------------------------------------------------------------------------------------------ compare


@app.command()
def compare(
    run_dir: RunArg,
    baseline: Annotated[list[str] | None, typer.Option(
        "--baseline", help="majority, embedding, llm, teacher (label section), first_sentence (extractive QA), or "
        "another run's directory (repeatable). "
        "Default: the recipe's compare.baselines.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Labelled file to compare on (default: --split).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="eval, test or gold split of the run's data.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Compare on a seeded sample of N examples.")] = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the run's existing comparison.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare a fine-tuned run with baselines on the same examples: metrics with confidence intervals,
    paired tests, latency, cost per 1,000 predictions and a verdict. Writes comparison.json/.md into the run.
    Classifiers: accuracy and McNemar; QA and generation runs: F1, exact match, answer similarity.

    Examples:

    \b
      slingshot compare runs/sst2 --baseline majority --baseline embedding
      slingshot compare runs/policyqa --baseline first_sentence --baseline llm --limit 300
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

    \b
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

    Examples:

    \b
      slingshot docs2qa ../shared/datasets/pdf_docs --out data/nist-qa
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


# ------------------------------------------------------------------------------------------------ export / serve


@app.command()
def export(
    run_dir: RunArg,
    merge: Annotated[bool, typer.Option("--merge", help="Fold a LoRA run's adapter into its base model: full "
                                        "Hugging Face weights that load without PEFT.")] = False,
    onnx: Annotated[bool, typer.Option("--onnx", help="Write <run>/onnx/model.onnx for ONNX Runtime.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also quantise the ONNX weights to int8 (with --onnx).")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="With --merge: folder to write (default: RUN/merged).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a finished run: merged full weights of a LoRA run, or ONNX (optionally int8) checked against
    PyTorch on the eval set.

    Examples:

    \b
      slingshot export runs/support-qa --merge --out models/support-qa
      slingshot export runs/sst2 --onnx
      slingshot export runs/sst2 --onnx --int8
      slingshot export runs/policyqa --onnx --int8
    """
    if int8 and not onnx:
        raise SlingshotError("--int8 quantises the ONNX export", "add --onnx")
    if not (merge or onnx):
        raise SlingshotError("say what to export", "add --merge (merged weights of a LoRA run) or --onnx [--int8]")
    if merge:
        from slingshot.export import export_merged

        target = export_merged(run_dir, out_dir, overwrite=overwrite)
        out.print(f"merged model written to {target} (from_pretrained loads it without PEFT)", highlight=False)
    if not onnx:
        return
    from slingshot.onnx_export import export_onnx

    check = export_onnx(str(run_dir), int8=int8, overwrite=overwrite)
    if as_json:
        out.print_json(json.dumps(check))
        return
    out.print(f"wrote {check['onnx_file']} ({check['size_mb']} MB)", highlight=False)
    if "span_agreement" in check:
        out.print(f"agreement with PyTorch on {check['examples']} eval questions: {check['span_agreement']:.2%} of "
                  f"answer spans identical, largest logit difference {check['max_start_logit_difference']:.4f} "
                  f"(start), {check['max_end_logit_difference']:.4f} (end)", highlight=False)
    elif "label_agreement" in check:
        out.print(f"agreement with PyTorch on {check['examples']} eval examples: {check['label_agreement']:.2%} of "
                  f"labels, largest probability difference {check['max_probability_difference']:.4f}",
                  highlight=False)
    else:
        out.print(f"largest score difference on {check['examples']} eval examples: "
                  f"{check['max_score_difference']:.5f}", highlight=False)


@app.command()
def soup(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more finished runs fine-tuned from the same base "
                                                   "model, e.g. runs/sst2 runs/sst2-seed1.", show_default=False)],
    name: Annotated[str | None, typer.Option("--name", help="Name of the new run (default: <first run>-soup).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write the run in (default: the first "
                                                 "run's folder, e.g. runs/).")] = None,
    weight: Annotated[list[float] | None, typer.Option("--weight", help="One per run, in order, for a weighted "
                                                       "mean (default: all equal).")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy soup: best run first, keep each next run only "
                                         "if the eval score does not drop.")] = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Average the weights of runs fine-tuned from the same base model (a model soup) into a new run, scored on
    the first run's eval split: often better than each run, at one model's inference cost, though not always
    (--greedy keeps only the runs that help). LoRA adapters are combined exactly into one adapter.

    Examples:

    \b
      slingshot soup runs/policyqa-s1 runs/policyqa-s2 runs/policyqa-s3 --name policyqa-soup
      slingshot soup runs/sst2 runs/sst2-seed1 --weight 2 --weight 1
      slingshot soup runs/sst2 runs/sst2-seed1 runs/sst2-lr5e-5 --greedy --name sst2-greedy
    """
    from slingshot.model_soup import soup as make_soup

    result = make_soup(run_dirs, name, root=out_dir, weights=weight, greedy=greedy, overwrite=overwrite)
    if as_json:
        out.print_json(json.dumps({"run": str(result.run.path), "metrics": result.metrics}))
        return
    search = result.metrics.get("greedy")
    if search:
        metric = search["metric"]
        for entry in search["runs"]:
            out.print(f"  alone     {entry[metric]:.4f} {metric}  {entry['run']}", highlight=False)
        for step in search["steps"]:
            verdict = "kept     " if step["kept"] else "left out "
            out.print(f"  {verdict} {step[metric]:.4f} {metric}  + {step['added']}", highlight=False)
    out.print(f"averaged {len(result.metrics['soup_of'])} of {len(run_dirs)} runs into {result.run.path}",
              highlight=False)
    for split in ("eval", "test", "gold"):
        if split in result.metrics:
            _render_metrics(result.metrics[split], f"{result.run.path.name}: {split}")


@app.command()
def serve(
    run_dir: RunArg,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8000,
    backend: BackendOpt = "torch",
    int8: Annotated[bool, typer.Option("--int8", help="With --backend onnx: the int8 export.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="With --backend torch: bf16 autocast (CPUs with AVX512-BF16).")] = False,
    max_batch_tokens: Annotated[int, typer.Option("--max-batch-tokens", help="Micro-batch budget (estimated tokens).")] = 4096,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a request waits for others to batch with.")] = 5.0,
    max_texts: Annotated[int, typer.Option("--max-texts", help="Most texts, questions or prompts in one request "
                                           "(413 beyond).")] = 256,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Longest text, question, context or prompt in "
                                           "characters (413 beyond).")] = 20000,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Generation runs: the most new tokens a "
                                                "request may ask for (422 beyond).")] = 1024,
    auth_env: Annotated[str | None, typer.Option("--auth-env", help="Environment variable holding a bearer token "
                                                 "that requests must send.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: physical cores).")] = None,
) -> None:
    """Serve a finished run over HTTP with micro-batching: POST /v1/predict, an OpenAI-compatible
    POST /v1/chat/completions, GET /v1/model and GET /health. Classification, regression, extractive-QA and
    generation runs; GET /v1/model says what this run expects.

    Examples:

    \b
      slingshot serve runs/sst2
      curl -s localhost:8000/v1/predict -d '{"texts": ["a gripping, funny film"]}'
      curl -s localhost:8000/v1/predict -d '{"question": "Who?", "context": "Ann wrote it."}'
      curl -s localhost:8000/v1/predict -d '{"prompt": "Reset my password?", "max_new_tokens": 64}'
      slingshot serve runs/sst2 --backend onnx --int8 --port 8080 --auth-env SLINGSHOT_TOKEN
    """
    from slingshot.serve import ServeLimits, auth_token_from_env
    from slingshot.serve import serve as run_server

    token = auth_token_from_env(auth_env)
    if auth_env and not token:
        raise SlingshotError(f"environment variable {auth_env} is empty or not set", f"export {auth_env}=<a token>")
    limits = ServeLimits(max_texts_per_request=max_texts, max_text_chars=max_chars,
                         max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_new_tokens=max_new_tokens,
                         auth_token=token)
    run_server(str(run_dir), host, port, limits, backend=backend, precision="bf16" if bf16 else "fp32",
               int8=int8, threads=threads)


@app.command()
def report(run_dir: RunArg) -> None:
    """Write <run>/report.html: one self-contained page with the summary, curves, confusion matrix, worst
    mistakes, reliability diagram and, when present, the comparison, similarity and learning curve.

    Example: slingshot report runs/sst2
    """
    from slingshot.report import build_report

    out.print(f"wrote {build_report(str(run_dir))}", highlight=False)
# ------------------------------------------------------------------------------------------------ label / select


@app.command()
def label(
    recipe: RecipeArg,
    input_file: Annotated[Path | None, typer.Option("--input", help="Texts to label (default: label.input).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", help="Folder for labelled.<ext> and label_report.json (default: <output.dir>/<name>-labels).")] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Label again into a folder that holds labels.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Label texts with the recipe's teacher LLM: each label with a confidence (log-probabilities, or agreement
    of label.samples answers), invalid answers counted, cost reported. Answers are cached: a rerun is free.

    Examples:

    \b
      slingshot label recipe.yaml --input unlabelled.csv --set label.llm.model=gpt-4o-mini
      slingshot label recipe.yaml --input unlabelled.csv --set label.seed_set=seed.csv --set label.shots=8 \\
          --set label.samples=5 --output labels/
    """
    _label(_recipe(recipe, set_), input_file, output, overwrite, as_json)


def _label(recipe, input_file: Path | None = None, output: Path | None = None, overwrite: bool = False,
           as_json: bool = False) -> None:
    from slingshot.label import label_file

    done = {"count": 0}

    def on_result(index: int, result) -> None:
        done["count"] += 1
        if done["count"] % 100 == 0:
            err.print(f"  teacher answers: {done['count']}", highlight=False)

    result = label_file(recipe, str(input_file) if input_file else None, output=str(output) if output else None,
                        overwrite=overwrite, on_result=on_result, log=lambda message: err.print(message, highlight=False))
    report = result.report
    if as_json:
        out.print_json(json.dumps(report))
        return
    cost = "unknown (set label.llm prices)" if report["cost_usd"] is None else f"{report['cost_usd']:.4f} USD"
    confidence = report["confidence"]
    out.print(f"labelled {report['labelled']} of {report['texts']} texts: "
              + ", ".join(f"{name} {count}" for name, count in report["per_label"].items())
              + f"; invalid {report['invalid']}, truncated {report['truncated']}; confidence from log-probabilities "
              f"{confidence['from_logprobs']}, agreement {confidence['from_agreement']}, none {confidence['none']}; "
              f"{report['sent']} requests sent, {report['cached']} cached; cost {cost}; {report['wall_s']:.0f} s",
              highlight=False)
    if "gold" in report:
        gold = report["gold"]
        out.print(f"teacher accuracy on {gold['examples']} gold examples: {gold['teacher_accuracy']:.1%}", highlight=False)
    out.print(f"written: {result.labelled_path}, {result.report_path.name}", highlight=False)


@app.command()
def select(
    run_dir: RunArg,
    input_file: Annotated[Path, typer.Option("--input", help="Pool of unlabelled texts (the run's text column).")],
    n: Annotated[int | None, typer.Option("--n", help="Texts to pick (default: select.n).")] = None,
    strategy: Annotated[str | None, typer.Option(
        "--strategy", help="uncertainty, diverse or mixed (default: select.strategy).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", help="Where to write the picks (.csv/.tsv/.jsonl; default RUN/selected-<strategy>.csv).")] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pick the texts whose labels would help the run most (active learning): least sure, most diverse, or both.
    Identical texts and texts the run already has are never picked. Label the picks, add them, train again.

    Examples:

    \b
      slingshot select runs/sst2 --input pool.csv --n 200 --strategy mixed
      slingshot select runs/sst2 --input pool.csv --strategy uncertainty --set uncertainty=entropy
    """
    from slingshot.recipe import apply_overrides, recipe_from_dict
    from slingshot.rundir import find_run
    from slingshot.selection import select_file

    run_path = find_run(str(run_dir))
    raw = yaml.safe_load(run_path.recipe.read_text(encoding="utf-8")) if run_path.recipe.is_file() else {}
    overrides = [item if item.startswith("select.") else f"select.{item}" for item in set_ or []]
    overrides += [f"select.n={n}"] if n is not None else []
    overrides += [f"select.strategy={strategy}"] if strategy is not None else []
    options = recipe_from_dict(apply_overrides(raw or {}, overrides), source=str(run_path.recipe)).select
    selection = select_file(str(run_path.path), str(input_file), options, output=str(output) if output else None,
                            log=lambda message: err.print(message, highlight=False))
    report = selection.report
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(f"picked {report['picked']} of {report['candidates']} candidate texts ({report['strategy']}); "
              f"dropped {report['already_labelled']} already labelled and {report['duplicates_dropped']} duplicates; "
              f"mean {report['uncertainty']} uncertainty {report['mean_uncertainty_picked']:.3f} picked vs "
              f"{report['mean_uncertainty_pool']:.3f} in the pool", highlight=False)
    out.print(f"written: {selection.path}", highlight=False)


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


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, exits, aborts) of click and of the copy of click that typer >= 0.20 vendors."""
    import click

    usage: list[type] = [click.ClickException]
    exits: list[type] = [click.exceptions.Exit, typer.Exit]
    aborts: list[type] = [click.exceptions.Abort, typer.Abort]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        pass
    else:
        usage.append(vendored.ClickException)
    return tuple(usage), tuple(exits), tuple(aborts)


def main() -> None:
    from rich.markup import escape

    usage_errors, exits, aborts = _click_exceptions()
    args = sys.argv[1:]
    debug = "--debug" in args
    if debug:  # the flag belongs to the app, but users add it anywhere, as the hints suggest
        args = ["--debug", *(arg for arg in args if arg != "--debug")]
    _quiet_libraries()
    try:
        code = app(args=args, prog_name="slingshot", standalone_mode=False)  # returns typer.Exit codes
        if isinstance(code, int) and code:
            sys.exit(code)
    except SlingshotError as error:
        if debug:
            raise
        err.print(f"[red]error:[/red] {error.message}", highlight=False, soft_wrap=True)
        if error.hint:
            err.print(f"hint: {error.hint}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except exits as exit_:
        sys.exit(getattr(exit_, "exit_code", 0))
    except usage_errors as error:  # a wrong verb, option or argument: one line, and where the usage is
        err.print(f"[red]error:[/red] {escape(error.format_message())}", highlight=False, soft_wrap=True)
        context = getattr(error, "ctx", None)
        err.print(f"hint: see `{context.command_path if context else 'slingshot'} --help`", highlight=False,
                  markup=False)
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, *aborts):
        err.print("interrupted")
        sys.exit(130)
    except Exception as error:  # an unexpected fault: one line, and how to see more
        if debug:
            raise
        err.print(f"[red]error:[/red] unexpected {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  highlight=False, soft_wrap=True)
        err.print("hint: rerun with --debug for the traceback, and report it if it is a bug", highlight=False)
        sys.exit(1)
