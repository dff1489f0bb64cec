"""`slingshot compare`: the fine-tuned model against baselines on the same examples, with intervals, paired tests,
latency, cost per 1,000 predictions, break-even volume, and a plain verdict per baseline.

Order of work: load the run and the comparison examples, predict with every system, score each with bootstrap
intervals, test the fine-tuned model against each baseline on paired answers, write comparison.json/.md and the
examples where systems disagree.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slingshot.baselines import (
    Examples,
    SystemPredictions,
    embedding_predictor,
    llm_baseline,
    majority,
    pick_shots,
    time_local,
)
from slingshot.compare_answers import (
    CHAT_BASELINES,
    QA_BASELINES,
    TEXT_TASKS,
    answer_examples,
    first_sentence_baseline,
    is_right,
    llm_reader,
    other_text_run,
    per_question,
    reader,
    similarities,
)
from slingshot.errors import DataError, RecipeError, RunDirError
from slingshot.metrics import exact_match, rouge_l
from slingshot.recipe import CompareSection, SimilaritySection
from slingshot.rundir import RunDir, write_json, write_jsonl
from slingshot.stats import (
    bootstrap_ci,
    bootstrap_indices,
    mcnemar_exact,
    mean_ci,
    paired_bootstrap_p,
)

BUILTIN_BASELINES = ("majority", "embedding", "llm", "teacher", "first_sentence")


@dataclass
class Comparison:
    report: dict[str, Any]
    markdown: str
    paths: dict[str, Path]


def comparison_paths(run: RunDir) -> dict[str, Path]:
    return {"json": run.path / "comparison.json", "markdown": run.path / "comparison.md",
            "disagreements": run.path / "comparison_disagreements.jsonl"}


def compare_run(run_path: str, options: CompareSection, *, data_path: str | None = None, force: bool = False,
                on_llm_result: Callable | None = None, log: Callable[[str], None] = lambda message: None) -> Comparison:
    """Compare a finished run with `options.baselines`; writes and returns the comparison.

    Raises:
        RecipeError: no baselines, or a baseline that does not fit the task.
        DataError: the comparison examples carry labels the run never saw.
        RunDirError: the run is unfinished, or already has a comparison and `force` is not set.
        LLMError: the LLM endpoint failed (answers received are cached; rerunning resumes).
    """
    from slingshot.evaluate import load_run, predict_labels
    from slingshot.models import count_parameters

    if not options.baselines:
        raise RecipeError("no baselines to compare with",
                          "pass --baseline majority|embedding|llm|<run dir>, or list them in compare.baselines")
    loaded = load_run(run_path)
    paths = comparison_paths(loaded.run)
    if paths["json"].exists() and not force:
        raise RunDirError(f"{loaded.run.path} already has a comparison ({paths['json'].name})",
                          "pass --force to replace it, or copy it away first")
    task = loaded.recipe.task
    answers = task in TEXT_TASKS
    regression = loaded.label_names is None and not answers
    for name in options.baselines:
        if name in ("embedding", "llm", "teacher") and regression:
            raise RecipeError(f"baseline '{name}' compares labels; this run is a regression",
                              "use majority (the mean) or another run")
        fitting = QA_BASELINES if task == "extractive_qa" else CHAT_BASELINES
        if answers and name in BUILTIN_BASELINES and name not in fitting:
            raise RecipeError(f"baseline '{name}' does not answer {task} examples",
                              f"use {', '.join(fitting)} or another {task} run")
        if not answers and name == "first_sentence":
            raise RecipeError("baseline 'first_sentence' answers questions; this run predicts labels",
                              "use majority, embedding, llm, teacher or another run")

    if answers:
        examples, source = answer_examples(loaded, options, data_path)
        train_labels, train_texts = [], []
    else:
        examples, train_labels, train_texts, source = comparison_examples(loaded, options, data_path)
    log(f"comparing on {len(examples.gold)} examples from {source}")

    systems: list[SystemPredictions] = []
    parameters = count_parameters(loaded.model)["total"]
    predict = reader(loaded) if answers else (lambda texts, pairs: predict_labels(loaded, texts, pairs))
    systems.append(time_local(f"fine-tuned {Path(loaded.recipe.model.name).name} ({loaded.run.path.name})",
                              "fine-tuned", predict, examples, options, parameters))
    for name in options.baselines:
        log(f"baseline: {name}")
        if name == "first_sentence":
            systems.append(first_sentence_baseline(examples))
        elif name == "llm" and answers:
            systems.append(llm_reader(examples, options, on_llm_result))
        elif name == "majority":
            systems.append(majority(train_labels, len(examples.gold), regression))
        elif name == "embedding":
            predict, size = embedding_predictor(options.embedding_model, loaded.label_names,
                                                options.label_descriptions)
            systems.append(time_local(f"zero-shot embeddings ({Path(options.embedding_model).name})", "embedding",
                                      predict, examples, options, size))
        elif name == "llm":
            shots = pick_shots(train_texts, train_labels, loaded.label_names, options.shots, options.seed)
            systems.append(llm_baseline(examples, loaded.label_names, shots, options, on_llm_result))
        elif name == "teacher":  # the LLM that labelled the training data, with its own prompt (cached answers)
            from slingshot.label import teacher_baseline

            systems.append(teacher_baseline(loaded.recipe, examples, on_llm_result))
        else:
            systems.append(other_run(name, loaded, examples, options))

    summary = json.loads(loaded.run.summary.read_text(encoding="utf-8")) if loaded.run.summary.is_file() else {}
    similarity = loaded.recipe.similarity if answers else None
    report = score(systems, examples, loaded.label_names, options, summary, source, similarity=similarity,
                   generated=task in ("generation", "seq2seq"))
    markdown = render_markdown(report)
    write_json(paths["json"], report)
    paths["markdown"].write_text(markdown, encoding="utf-8")
    write_jsonl(paths["disagreements"], disagreements(systems, examples, is_right if answers else None))
    return Comparison(report, markdown, paths)


def comparison_examples(loaded, options: CompareSection, data_path: str | None):
    """The examples every system answers: the run's eval (or test) split, or a labelled file; seeded sample."""
    from slingshot.data import load_data, load_file

    data = load_data(loaded.recipe, strict=True)
    train = data.splits["train"]
    names = loaded.label_names
    if data_path is not None:
        dataset, _ = load_file(data_path, loaded.recipe, names, need_label=True)
        source = data_path
    else:
        if options.split not in data.splits:
            raise DataError(f"the run's recipe has no {options.split} split", "use --split eval, or pass --data FILE")
        dataset, source = data.splits[options.split], data.sources[options.split]
    if names is not None and data.label_names is not None and list(data.label_names) != list(names):
        raise DataError(f"{source}: the data's labels ({', '.join(data.label_names)}) differ from the run's "
                        f"({', '.join(names)})", "compare on data with the classes the run was trained on")
    rows = list(range(len(dataset)))
    if options.limit is not None and options.limit < len(rows):
        rows = sorted(random.Random(options.seed).sample(rows, options.limit))
    dataset = dataset.select(rows)
    decode = (lambda value: float(value)) if names is None else (lambda value: names[int(value)])
    pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
    examples = Examples(list(dataset["text"]), pairs, [decode(value) for value in dataset["label"]])
    return examples, [decode(value) for value in train["label"]], list(train["text"]), source


def other_run(path: str, loaded, examples: Examples, options: CompareSection) -> SystemPredictions:
    """Another Slingshot run (full vs LoRA, another model size) answering the same examples."""
    from slingshot.evaluate import load_run, predict_labels
    from slingshot.models import count_parameters

    try:
        other = load_run(path)
    except RunDirError as error:
        raise RecipeError(f"baseline '{path}' is not a built-in baseline ({', '.join(BUILTIN_BASELINES)}) "
                          f"nor a finished run: {error.message}", error.hint) from error
    if loaded.recipe.task in TEXT_TASKS or other.recipe.task in TEXT_TASKS:
        return other_text_run(other, loaded.recipe.task, examples, options)
    if (other.label_names is None) != (loaded.label_names is None) or (
            other.label_names is not None and set(other.label_names) != set(loaded.label_names)):
        raise RecipeError(f"run {other.run.path} predicts other labels ({other.label_names}) than "
                          f"{loaded.run.path} ({loaded.label_names})", "compare runs trained on the same classes")
    return time_local(f"{Path(other.recipe.model.name).name} ({other.run.path.name})", "run",
                      lambda texts, pairs: predict_labels(other, texts, pairs), examples, options,
                      count_parameters(other.model)["total"])


# ---- scoring ------------------------------------------------------------------------------------------------


def macro_f1(predicted: np.ndarray, gold: np.ndarray, classes: int) -> float:
    """Macro-F1 over the classes seen in gold or predictions; an invalid answer (index == classes) is never right."""
    matrix = np.bincount(gold * (classes + 1) + predicted, minlength=classes * (classes + 1)).reshape(
        classes, classes + 1)  # rows: gold; columns: predicted, the last one invalid
    true_positive = np.diag(matrix[:, :classes]).astype(float)
    support = matrix.sum(axis=1)
    predicted_count = matrix[:, :classes].sum(axis=0)
    present = (support > 0) | (predicted_count > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + predicted_count > 0, 2 * true_positive / (support + predicted_count), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def score(systems: list[SystemPredictions], examples: Examples, label_names: list[str] | None,
          options: CompareSection, summary: dict[str, Any], source: str,
          similarity: SimilaritySection | None = None, generated: bool = False) -> dict[str, Any]:
    """Metrics with intervals per system, paired tests and verdicts against the fine-tuned model, costs.

    `similarity` marks a comparison of text answers: gold is a list of answers per example; `generated` adds
    ROUGE-L (generation, seq2seq)."""
    count = len(examples.gold)
    indices = bootstrap_indices(count, options.bootstrap_samples, options.seed)
    level = options.confidence
    fine_tuned = systems[0]
    rows, tests = [], []
    if similarity is not None:
        scored = [per_question(system.predictions, examples.gold) for system in systems]
        cosines = similarities(systems, examples.gold, similarity)
        for position, (system, (em, f1)) in enumerate(zip(systems, scored)):
            metrics = {"f1": (float(f1.mean()), *mean_ci(f1, indices, level)),
                       "exact_match": (float(em.mean()), *mean_ci(em, indices, level))}
            if generated:
                rouge = per_question(system.predictions, examples.gold, rouge_l)[1]
                metrics["rouge_l"] = (float(rouge.mean()), *mean_ci(rouge, indices, level))
            if cosines is not None:
                cosine = cosines[position]
                acceptable = (cosine >= similarity.acceptable).astype(float)
                metrics["similarity"] = (float(cosine.mean()), *mean_ci(cosine, indices, level))
                metrics["acceptable"] = (float(acceptable.mean()), *mean_ci(acceptable, indices, level))
            rows.append(_row(system, metrics))
        for system, (_, f1) in zip(systems[1:], scored[1:]):
            ours = scored[0][1]
            p_value, difference = paired_bootstrap_p(lambda r, a=ours: float(a[r].mean()),
                                                     lambda r, b=f1: float(b[r].mean()), indices)
            tests.append({"baseline": system.name, "test": "paired bootstrap (F1)", "p_value": p_value,
                          "difference": difference,
                          "agreement": float(np.mean([exact_match(a or "", b or "") for a, b in
                                                      zip(systems[0].predictions, system.predictions)]))})
        primary = "f1"
    elif label_names is not None:
        index = {name: i for i, name in enumerate(label_names)}
        gold = np.array([index[label] for label in examples.gold])
        encoded = [np.array([index.get(p, len(label_names)) if p is not None else len(label_names)
                             for p in system.predictions]) for system in systems]
        correct = [predicted == gold for predicted in encoded]
        for system, predicted, right in zip(systems, encoded, correct):
            rows.append(_row(system, {
                "accuracy": (float(right.mean()), *mean_ci(right.astype(float), indices, level)),
                "macro_f1": (macro_f1(predicted, gold, len(label_names)),
                             *bootstrap_ci(lambda r, p=predicted: macro_f1(p[r], gold[r], len(label_names)), indices,
                                           level)),
            }))
        for system, right in zip(systems[1:], correct[1:]):
            test = mcnemar_exact(correct[0], right)
            tests.append({"baseline": system.name, "test": "McNemar exact", "p_value": test.p_value,
                          "only_fine_tuned_correct": test.only_a_correct, "only_baseline_correct": test.only_b_correct,
                          "difference": float(correct[0].mean() - right.mean())})
        for test, predicted in zip(tests, encoded[1:]):
            test["agreement"] = float(np.mean(predicted == encoded[0]))  # same answer, right or wrong
        primary = "accuracy"
    else:
        gold = np.asarray(examples.gold, dtype=float)
        predicted = [np.asarray(system.predictions, dtype=float) for system in systems]

        def rmse_of(values):
            return lambda r: float(np.sqrt(np.mean((values[r] - gold[r]) ** 2)))

        for system, values in zip(systems, predicted):
            errors = np.abs(values - gold)
            rows.append(_row(system, {
                "rmse": (rmse_of(values)(np.arange(count)), *bootstrap_ci(rmse_of(values), indices, level)),
                "mae": (float(errors.mean()), *mean_ci(errors, indices, level)),
            }))
        for system, values in zip(systems[1:], predicted[1:]):
            # lower RMSE is better: test baseline − fine-tuned, so a positive difference favours the fine-tuned model
            p_value, difference = paired_bootstrap_p(rmse_of(values), rmse_of(predicted[0]), indices)
            tests.append({"baseline": system.name, "test": "paired bootstrap (RMSE)", "p_value": p_value,
                          "difference": difference})
        primary = "rmse"

    # Making a student from teacher labels cost the labelling too: both count before fine-tuning pays for itself.
    labelling_cost = (summary.get("labels") or {}).get("labelling_cost_usd")
    fine_tune_cost = _fine_tune_cost(summary, options)
    if fine_tune_cost is not None and labelling_cost is not None:
        fine_tune_cost += labelling_cost
    for test, system in zip(tests, systems[1:]):
        test["verdict"] = _verdict(test, level)
        test["cost_ratio"] = _ratio(system.cost_per_1k_usd, fine_tuned.cost_per_1k_usd)
        test["break_even_predictions"] = _break_even(fine_tune_cost, fine_tuned.cost_per_1k_usd, system.cost_per_1k_usd)
        test["sentence"] = _sentence(test, rows[0], next(r for r in rows if r["name"] == system.name), primary, level)
    published = [{"name": p.name, "metric": p.metric, "value": p.value / 100 if p.value > 1 else p.value,
                  "source": p.source, "measured": False} for p in options.published]
    return {"examples": count, "source": source, "primary_metric": primary, "confidence": level,
            "bootstrap_samples": options.bootstrap_samples, "systems": rows, "tests": tests, "published": published,
            "fine_tune_cost_usd": fine_tune_cost, "labelling_cost_usd": labelling_cost,
            "hardware_price_per_hour_usd": options.hardware_price_per_hour_usd}


def _row(system: SystemPredictions, metrics: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    return {"name": system.name, "kind": system.kind,
            "metrics": {name: {"value": v, "ci_low": low, "ci_high": high} for name, (v, low, high) in metrics.items()},
            "invalid_answers": system.invalid, "latency_ms": system.latency,
            "throughput_per_s": system.throughput_per_s, "parameters": system.parameters,
            "peak_rss_mb": system.peak_rss_mb, "cost_per_1k_usd": system.cost_per_1k_usd, "details": system.details}


def _fine_tune_cost(summary: dict[str, Any], options: CompareSection) -> float | None:
    if summary.get("estimated_cost_usd"):
        return float(summary["estimated_cost_usd"])
    if "wall_time_s" in summary:
        return summary["wall_time_s"] / 3600 * options.hardware_price_per_hour_usd
    return None


def _ratio(baseline: float | None, fine_tuned: float | None) -> float | None:
    if baseline is None or fine_tuned is None or fine_tuned <= 0:
        return None
    return baseline / fine_tuned


def _break_even(fine_tune_cost: float | None, fine_tuned_1k: float | None, baseline_1k: float | None) -> int | None:
    """Predictions after which fine-tuning has paid for itself; None when the baseline is not dearer per prediction."""
    if fine_tune_cost is None or fine_tuned_1k is None or baseline_1k is None or baseline_1k <= fine_tuned_1k:
        return None
    return int(np.ceil(fine_tune_cost / ((baseline_1k - fine_tuned_1k) / 1000)))


def _verdict(test: dict[str, Any], level: float) -> str:
    if test["p_value"] >= 1 - level or test["difference"] == 0:
        return "not distinguishable"
    return "better" if test["difference"] > 0 else "worse"


def _sentence(test: dict[str, Any], ours: dict, theirs: dict, primary: str, level: float) -> str:
    mine, other = ours["metrics"][primary]["value"], theirs["metrics"][primary]["value"]
    if primary in ("accuracy", "f1"):
        name = "accuracy" if primary == "accuracy" else "F1"
        figures = (f"{name} {mine * 100:.1f} vs {other * 100:.1f}{'%' if primary == 'accuracy' else ''} "
                   f"({(mine - other) * 100:+.1f} points, p = {test['p_value']:.3g})")
    else:
        figures = f"RMSE {mine:.4g} vs {other:.4g} (p = {test['p_value']:.3g})"
    head = {"better": "is better than", "worse": "is worse than",
            "not distinguishable": "cannot be told apart from"}[test["verdict"]]
    cost_ours, cost_theirs = ours["cost_per_1k_usd"], theirs["cost_per_1k_usd"]
    if cost_theirs is None:
        cost = f"the cost of {theirs['name']} is unknown (give its price in the recipe)"
    elif cost_ours is None:
        cost = "the fine-tuned model's cost is unknown"
    elif test["cost_ratio"] is not None and cost_theirs > 0:
        cost = (f"it costs {_usd(cost_ours)} per 1,000 predictions against {_usd(cost_theirs)} "
                f"({_times(test['cost_ratio'])})")
    else:
        cost = f"it costs {_usd(cost_ours)} per 1,000 predictions against {_usd(cost_theirs)}"
    return f"The fine-tuned model {head} {theirs['name']} at {level:.0%} confidence: {figures}; {cost}."


def _times(ratio: float) -> str:
    if 0.8 <= ratio <= 1.25:
        return "about the same cost"
    return f"{ratio:,.0f}x cheaper" if ratio > 1 else f"{1 / ratio:,.1f}x dearer"


def _usd(value: float | None) -> str:
    """Two significant digits below a cent, written out (0.000065 USD, not 6.5e-05)."""
    if value is None:
        return "unknown"
    if value == 0:
        return "0 USD"
    if value < 0.01:
        return f"{value:.{1 - math.floor(math.log10(value))}f} USD"
    return f"{value:,.3f} USD"


# ---- outputs ------------------------------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    primary = report["primary_metric"]
    second = {"accuracy": "macro_f1", "f1": "exact_match"}.get(primary, "mae")
    pct = primary in ("accuracy", "f1")
    level = f"{report['confidence']:.0%}"

    def fmt(value: float) -> str:
        return f"{value * 100:.1f}" if pct else f"{value:.4g}"

    header = (f"| System | {primary} ({level} CI) | {second} ({level} CI) | invalid | p50 ms | p95 ms | "
              "per 1k predictions | parameters |")
    lines = [f"# Comparison on {report['examples']} examples", "", f"Data: {report['source']}", "",
             header, "|---|---|---|---|---|---|---|---|"]
    for row in report["systems"]:
        a, b = row["metrics"][primary], row["metrics"][second]
        latency = row["latency_ms"]
        lines.append(
            f"| {row['name']} | {fmt(a['value'])} [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}] | "
            f"{fmt(b['value'])} [{fmt(b['ci_low'])}, {fmt(b['ci_high'])}] | {row['invalid_answers']} | "
            f"{_ms(latency['p50_ms'])} | {_ms(latency['p95_ms'])} | {_usd(row['cost_per_1k_usd'])} | "
            f"{_count(row['parameters'])} |")
    for item in report["published"]:
        value = fmt(item["value"]) if item["metric"] == primary else f"{item['metric']} {item['value']:.3g}"
        lines.append(f"| {item['name']} (published, not measured: {item['source']}) | {value} | | | | | | |")
    if primary == "f1" and any("similarity" in row["metrics"] for row in report["systems"]):
        rouge = any("rouge_l" in row["metrics"] for row in report["systems"])
        lines += ["", ("Answer similarity (embedding cosine with the closest gold answer; acceptable at the run's "
                       "similarity.acceptable threshold):"), "",
                  f"| System | mean similarity ({level} CI) | acceptable |" + (" ROUGE-L |" if rouge else ""),
                  "|---|---|---|" + ("---|" if rouge else "")]
        for row in report["systems"]:
            cosine, share = row["metrics"]["similarity"], row["metrics"]["acceptable"]
            lines.append(f"| {row['name']} | {cosine['value']:.3f} [{cosine['ci_low']:.3f}, {cosine['ci_high']:.3f}] | "
                         f"{share['value']:.1%} |" + (f" {row['metrics']['rouge_l']['value'] * 100:.1f} |" if rouge else ""))
    lines += ["", "## Verdicts", ""]
    for test in report["tests"]:
        extra = (f" Fine-tuning pays for itself after {test['break_even_predictions']:,} predictions."
                 if test["break_even_predictions"] is not None else "")
        agree = f" The two agree on {test['agreement']:.1%} of examples." if "agreement" in test else ""
        lines.append(f"- {test['sentence']}{agree}{extra}")
    if report["fine_tune_cost_usd"] is not None:
        labelling = report.get("labelling_cost_usd")
        labels_note = f" (teacher labels included: {_usd(labelling)})" if labelling is not None else ""
        note = (f"Fine-tuning cost: {_usd(report['fine_tune_cost_usd'])}{labels_note} at "
                f"{report['hardware_price_per_hour_usd']} "
                "USD/hour. Local costs are measured time on this machine at that price; endpoint costs are token "
                "usage at the recipe's (or the built-in) prices.")
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _count(value: int | None) -> str:
    if not value:
        return ""
    return f"{value / 1e6:.1f}M" if value < 1e9 else f"{value / 1e9:.1f}B"


def disagreements(systems: list[SystemPredictions], examples: Examples,
                  is_right: Callable[[Any, Any], bool] | None = None) -> list[dict[str, Any]]:
    """Examples on which the systems do not all give the same answer, with every system's answer.

    `is_right(answer, gold)` decides which answers are correct (default: equal to gold)."""
    is_right = is_right or (lambda answer, gold: answer == gold)
    records = []
    for i, gold in enumerate(examples.gold):
        answers = {system.name: system.predictions[i] for system in systems}
        if len({json.dumps(answer) for answer in answers.values()}) > 1:
            record: dict[str, Any] = {"index": i, "text": examples.texts[i]}
            if examples.pairs is not None:
                record["text_pair"] = examples.pairs[i]
            record["gold"] = gold
            record["answers"] = answers
            record["correct"] = [name for name, answer in answers.items() if is_right(answer, gold)]
            records.append(record)
    return records


class _CallableModule(type(sys.modules[__name__])):  # type: ignore[misc]
    """`slingshot.compare(run, baselines)` is the Python API's compare (slingshot.api.compare). Importing this
    module binds `slingshot.compare` to the module itself, so the module answers that call."""

    def __call__(self, *args: Any, **kwargs: Any):
        from slingshot.api import compare as api_compare

        return api_compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
