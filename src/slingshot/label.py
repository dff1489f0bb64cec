"""`slingshot label`: a teacher LLM labels unlabelled texts, each label with a confidence, through the one client.

Order of work: the label names and k-shot examples (from the recipe and its seed set), the texts (truncated to fit
the teacher's context, and counted), one answer per text with log-probabilities asked for, extra sampled answers
where no log-probabilities came back (agreement), then the labelled file and label_report.json. Every answer goes
through the client's cache, so a rerun (or a resume after a failure) asks only what is missing.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slingshot.baselines import (
    Examples,
    SystemPredictions,
    build_prompt,
    parse_label,
    pick_shots,
    response_format,
)
from slingshot.confidence import (
    accuracy_by_min_confidence,
    agreement,
    logprob_confidence,
)
from slingshot.data import encode_label, infer_label_names, read_rows, to_examples
from slingshot.errors import DataError, RecipeError, RunDirError
from slingshot.llm import (
    ChatRequest,
    ChatResult,
    LLMClient,
    Usage,
    prices_per_1m_usd,
    token_cost_usd,
)
from slingshot.recipe import Recipe
from slingshot.rundir import write_json, write_table
from slingshot.stats import percentiles_ms

# Tokens are estimated from characters to decide truncation without the teacher's tokenizer. OpenAI's rule of thumb
# is ~4 characters per token of English; 3 overestimates tokens, so a text cut to fit does fit in most languages.
CHARS_PER_TOKEN = 3


@dataclass
class TeacherLabels:
    """The teacher's label (None: invalid), confidence (None: unknown) and its source for each text, in order."""

    labels: list[str | None]
    confidences: list[float | None]
    sources: list[str]  # logprobs, agreement, none
    answers: list[str]  # the first answer's text
    latencies_s: list[float]
    truncated: int
    text_budget_chars: int
    usage: Usage = field(default_factory=Usage)


def teacher_setup(recipe: Recipe) -> tuple[list[str], list[tuple[str, str]]]:
    """Label names (the recipe's, else the seed set's) and the k-shot examples from the seed set.

    Raises:
        RecipeError: no label names anywhere, or shots asked for without a seed set.
        DataError: the seed set's labels differ from the recipe's.
    """
    options = recipe.label
    seed_texts: list[str] = []
    seed_labels: list[str] = []
    if options.seed_set is not None:
        rows = read_rows(options.seed_set)
        examples, _ = to_examples(rows, recipe)
        raw_labels = [example["label"] for example in examples]
        names = infer_label_names(raw_labels, recipe)
        decoded = [encode_label(value, names, recipe) for value in raw_labels]
        problems = []
        unknown = sorted({str(value).strip() for value, index in zip(raw_labels, decoded) if index is None})
        if unknown:
            problems.append(f"not in data.label_names: {', '.join(unknown)}")
        missing = sorted(set(names) - {names[index] for index in decoded if index is not None})
        if missing:
            problems.append(f"no seed example of: {', '.join(missing)}")
        if problems:
            raise DataError(f"{rows.source}: the seed set's labels differ from the recipe's ({'; '.join(problems)})",
                            f"the recipe's labels are {', '.join(names)}; make the seed set use exactly these")
        seed_texts = [example["text"] for example in examples]
        seed_labels = [names[index] for index in decoded if index is not None]
    elif recipe.data.label_names:
        names = list(recipe.data.label_names)
    else:
        raise RecipeError("the teacher needs the label names", "set data.label_names, or label.seed_set to a "
                          "labelled file")
    if options.shots and not seed_texts:
        raise RecipeError(f"label.shots is {options.shots} but there is no seed set to take examples from",
                          "set label.seed_set to a labelled file, or label.shots: 0")
    return names, pick_shots(seed_texts, seed_labels, names, options.shots, options.seed)


def teacher_name(recipe: Recipe, shots: list) -> str:
    return f"{recipe.label.llm.model} ({len(shots)}-shot)" if shots else f"{recipe.label.llm.model} (zero-shot)"


def text_budget_chars(recipe: Recipe, names: list[str], shots: list[tuple[str, str]]) -> int:
    """Characters of text (and second text) that fit the teacher's context beside the prompt and the answer."""
    system, user = build_prompt("", None, names, recipe.label.label_descriptions, shots, recipe.label.answer_format)
    prompt_tokens = math.ceil((len(system) + len(user)) / CHARS_PER_TOKEN)
    budget = recipe.label.context_tokens - prompt_tokens - recipe.label.llm.max_tokens
    if budget < 16:
        raise RecipeError(f"the prompt alone (~{prompt_tokens} tokens with {len(shots)} examples) leaves no room for "
                          f"the text in label.context_tokens ({recipe.label.context_tokens})",
                          "lower label.shots, or raise label.context_tokens to the teacher's real context")
    return budget * CHARS_PER_TOKEN


def fit(text: str, pair: str | None, budget: int) -> tuple[str, str | None, bool]:
    """The text (and second text) cut to `budget` characters in all, each keeping at least half when both are long."""
    if len(text) + len(pair or "") <= budget:
        return text, pair, False
    if pair is None:
        return text[:budget], None, True
    keep_text = max(budget // 2, budget - len(pair))
    return text[:keep_text], pair[: budget - min(len(text), keep_text)], True


def ask_teacher(recipe: Recipe, texts: list[str], pairs: list[str] | None, names: list[str],
                shots: list[tuple[str, str]], on_result: Callable | None = None) -> TeacherLabels:
    """Label every text with the teacher. Raises LLMError when the endpoint fails (answers received are cached)."""
    options = recipe.label
    budget = text_budget_chars(recipe, names, shots)
    fmt = response_format(options.answer_format, names)
    prompts, truncated = [], 0
    for index, text in enumerate(texts):
        text, pair, cut = fit(text, pairs[index] if pairs else None, budget)
        truncated += cut
        prompts.append(build_prompt(text, pair, names, options.label_descriptions, shots, options.answer_format))
    client = LLMClient(options.llm)
    try:
        first, usage = client.complete(
            [ChatRequest.of(system, user, response_format=fmt, logprobs=options.logprobs,
                            top_logprobs=options.top_logprobs if options.logprobs else None)
             for system, user in prompts], on_result=on_result)
        labels = [parse_label(result.text, names) for result in first]
        confidences = [logprob_confidence(label, names, result.logprobs) if label else None
                       for label, result in zip(labels, first)]
        sources = ["logprobs" if confidence is not None else "none" for confidence in confidences]
        # Where log-probabilities gave nothing, n sampled answers vote; each has its own `sample` index so that
        # the cache keeps them apart (the same prompt at temperature > 0 is a different request per sample).
        unsure = [i for i, confidence in enumerate(confidences) if confidence is None]
        if options.samples > 1 and unsure:
            extra = [ChatRequest.of(*prompts[i], response_format=fmt, temperature=options.sample_temperature,
                                    sample=sample) for i in unsure for sample in range(1, options.samples)]
            more, extra_usage = client.complete(extra)
            _add_usage(usage, extra_usage)
            per_text = options.samples - 1
            for position, i in enumerate(unsure):
                answers = [labels[i]] + [parse_label(result.text, names)
                                         for result in more[position * per_text:(position + 1) * per_text]]
                labels[i], confidences[i] = agreement(answers)
                sources[i] = "agreement" if labels[i] is not None else "none"
                if labels[i] is None:
                    confidences[i] = None
    finally:
        client.cache.close()
    return TeacherLabels(labels, confidences, sources, [result.text for result in first],
                         [result.latency_s for result in first], truncated, budget, usage)


def _add_usage(total: Usage, more: Usage) -> None:
    for name in ("requests", "cached", "prompt_tokens", "completion_tokens", "failed"):
        setattr(total, name, getattr(total, name) + getattr(more, name))
    total.wall_s += more.wall_s


@dataclass
class LabelResult:
    labelled_path: Path
    report_path: Path
    report: dict[str, Any]


def label_file(recipe: Recipe, input_path: str | None = None, *, output: str | None = None, overwrite: bool = False,
               on_result: Callable[[int, ChatResult], None] | None = None,
               log: Callable[[str], None] = lambda message: None) -> LabelResult:
    """Label a file of texts with the recipe's teacher: writes the labelled file and label_report.json.

    Raises:
        RecipeError, DataError: no input, no label names, an empty input, seed labels that differ from the recipe's.
        RunDirError: the output folder already holds labels and `overwrite` is not set.
        LLMError: the endpoint failed; answers received are cached, so running again resumes for free.
    """
    start = time.perf_counter()
    source = input_path or recipe.label.input
    if source is None:
        raise RecipeError("no texts to label", "pass --input FILE, or set label.input in the recipe")
    if output is not None:
        recipe.label.output = output
    folder = recipe.label_folder
    if input_path is not None:
        recipe.label.input = str(Path(input_path).resolve())
    labelled_path, report_path = recipe.labelled_path, folder / "label_report.json"
    if report_path.exists() and not overwrite:
        raise RunDirError(f"{folder} already holds teacher labels ({report_path.name})",
                          "pass --overwrite to label again (cached answers cost nothing), or --output another folder")
    names, shots = teacher_setup(recipe)
    rows = read_rows(source)
    examples, skipped = to_examples(rows, recipe, need_label=False)
    if not examples:
        raise DataError(f"{rows.source}: no texts to label ({len(rows.records)} rows, {skipped.count} empty)",
                        f"check the file has rows with text in column '{recipe.data.text_column}'")
    pairs = [example["text_pair"] for example in examples] if recipe.data.text_pair_column else None
    log(f"labelling {len(examples)} texts from {rows.source} with {teacher_name(recipe, shots)}")
    taught = ask_teacher(recipe, [example["text"] for example in examples], pairs, names, shots, on_result)

    by_line = dict(zip(rows.lines, rows.records))
    extra = [recipe.data.label_column, recipe.data.confidence_column, "teacher"]
    columns = [column for column in rows.columns if column not in extra] + extra
    name = teacher_name(recipe, shots)
    labelled = []
    for example, label, confidence in zip(examples, taught.labels, taught.confidences):
        if label is not None:
            record = dict(by_line[example["row"]])
            record.update({extra[0]: label, extra[1]: None if confidence is None else round(confidence, 4),
                           "teacher": name})
            labelled.append(record)
    write_table(labelled_path, labelled, columns)

    report = label_report(recipe, taught, names, shots, rows.source, skipped.count,
                          [example["row"] for example in examples])
    report.update({"output": str(labelled_path), "wall_s": round(time.perf_counter() - start, 2)})
    if recipe.data.gold is not None:
        report["gold"] = teacher_on_gold(recipe, names, shots)
    write_json(report_path, report)
    return LabelResult(labelled_path, report_path, report)


def label_report(recipe: Recipe, taught: TeacherLabels, names: list[str], shots: list, source: str,
                 skipped: int, lines: list[int]) -> dict[str, Any]:
    """Counts per label, invalid answers, confidence sources, truncation, tokens and cost of one labelling."""
    endpoint = recipe.label.llm
    usage = taught.usage
    valid = sum(label is not None for label in taught.labels)
    cost = token_cost_usd(usage.prompt_tokens, usage.completion_tokens, endpoint)
    known = [confidence for confidence in taught.confidences if confidence is not None]
    counts = Counter(label for label in taught.labels if label is not None)
    return {
        "input": source, "texts": len(taught.labels), "skipped_empty": skipped, "labelled": valid,
        "per_label": {name: counts.get(name, 0) for name in names},
        "invalid": len(taught.labels) - valid,
        "invalid_examples": [{"row": line, "answer": answer[:200]} for line, label, answer
                             in zip(lines, taught.labels, taught.answers) if label is None][:20],
        "truncated": taught.truncated, "text_budget_chars": taught.text_budget_chars,
        "confidence": {"from_logprobs": taught.sources.count("logprobs"),
                       "from_agreement": taught.sources.count("agreement"), "none": taught.sources.count("none"),
                       "mean": round(sum(known) / len(known), 4) if known else None},
        "teacher": {"name": teacher_name(recipe, shots), "base_url": endpoint.base_url, "model": endpoint.model,
                    "shots": len(shots), "answer_format": recipe.label.answer_format,
                    "temperature": endpoint.temperature, "logprobs": recipe.label.logprobs,
                    "samples": recipe.label.samples, "sample_temperature": recipe.label.sample_temperature,
                    "context_tokens": recipe.label.context_tokens},
        "requests": usage.requests, "cached": usage.cached, "sent": usage.requests - usage.cached,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "prices_per_1m_usd": prices_per_1m_usd(endpoint), "cost_usd": cost,
        "cost_per_1k_labels_usd": cost / valid * 1000 if cost is not None and valid else None,
    }


def teacher_on_gold(recipe: Recipe, names: list[str], shots: list) -> dict[str, Any]:
    """The teacher's accuracy on the gold set, and what each minimum confidence would keep and buy there."""
    rows = read_rows(recipe.data.gold)  # type: ignore[arg-type]
    examples, _ = to_examples(rows, recipe)
    gold = []
    for example in examples:
        index = encode_label(example["label"], names, recipe)
        if index is None:
            raise DataError(f"{rows.source}:{example['row']}: gold label {example['label']!r} is not one of the "
                            f"teacher's labels ({', '.join(names)})", "fix the gold file or data.label_names")
        gold.append(names[index])
    pairs = [example["text_pair"] for example in examples] if recipe.data.text_pair_column else None
    taught = ask_teacher(recipe, [example["text"] for example in examples], pairs, names, shots)
    correct = [label == truth for label, truth in zip(taught.labels, gold)]
    return {"source": rows.source, "examples": len(gold), "teacher_accuracy": round(sum(correct) / len(gold), 4),
            "invalid": taught.labels.count(None),
            "cost_usd": token_cost_usd(taught.usage.prompt_tokens, taught.usage.completion_tokens, recipe.label.llm),
            "accuracy_by_min_confidence": accuracy_by_min_confidence(correct, taught.confidences)}


def teacher_baseline(recipe: Recipe, examples: Examples, on_result: Callable | None = None) -> SystemPredictions:
    """The teacher as a `compare` baseline: the same prompts as `slingshot label` (so cached answers are reused)."""
    names, shots = teacher_setup(recipe)
    taught = ask_teacher(recipe, examples.texts, examples.pairs, names, shots, on_result)
    cost = token_cost_usd(taught.usage.prompt_tokens, taught.usage.completion_tokens, recipe.label.llm)
    count = max(len(examples.texts), 1)
    details = {"base_url": recipe.label.llm.base_url, "model": recipe.label.llm.model, "shots": len(shots),
               "requests": taught.usage.requests, "cached_answers": taught.usage.cached,
               "prompt_tokens": taught.usage.prompt_tokens, "completion_tokens": taught.usage.completion_tokens,
               "cost_usd": cost, "truncated": taught.truncated}
    return SystemPredictions(f"teacher {teacher_name(recipe, shots)}", "teacher", taught.labels,
                             percentiles_ms(taught.latencies_s),
                             cost_per_1k_usd=cost / count * 1000 if cost is not None else None, details=details)
