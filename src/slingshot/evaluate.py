"""Using a finished run: load its model, score a labelled file, predict texts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from slingshot.data import Skipped, load_file
from slingshot.judge import judge_records
from slingshot.recipe import Recipe, recipe_from_dict
from slingshot.rundir import RunDir, find_run
from slingshot.similarity import score_records
from slingshot.tasks import GeneratingTask, Task, get_task
from slingshot.train import default_threads, evaluate_split, limit_kernel_caches


@dataclass
class LoadedRun:
    run: RunDir
    recipe: Recipe
    task: Task
    model: torch.nn.Module
    tokenizer: Any
    label_names: list[str] | None


def load_run(path: str, threads: int | None = None) -> LoadedRun:
    """A finished run's recipe, task, model (eval mode) and tokenizer. Raises RunDirError when it is not finished."""
    from slingshot.models import load_tokenizer

    run = find_run(path)
    torch.set_num_threads(threads or default_threads())
    limit_kernel_caches()  # serve and predict with bf16 meet inputs of every shape
    recipe = run_recipe(run)
    task = get_task(recipe.task, recipe)
    tokenizer = load_tokenizer(run.model)
    model = task.load_model(run.model)
    label_names = None
    if recipe.task == "classification":
        label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return LoadedRun(run, recipe, task, model, tokenizer, label_names)


def run_recipe(run: RunDir) -> Recipe:
    """The resolved recipe a run was trained with, read without loading its model."""
    raw = yaml.safe_load(run.recipe.read_text(encoding="utf-8")) if run.recipe.is_file() else {}
    return recipe_from_dict(raw, source=str(run.recipe))


def evaluate_file(loaded: LoadedRun, path: str, histogram: Path | None = None) -> tuple[dict[str, Any], list[dict], Skipped]:
    """Metrics and per-example records of the run's model on any labelled file with the run's columns.

    Text answers (extractive QA) are also scored by answer similarity; `histogram` is where its PNG goes.
    """
    dataset, skipped = load_file(path, loaded.recipe, loaded.label_names, need_label=True)
    encoded = loaded.task.prepare({"data": dataset}, loaded.tokenizer, loaded.recipe)["data"]
    result = evaluate_split(loaded.task, loaded.model, encoded, loaded.task.collator(loaded.tokenizer),
                            loaded.label_names, torch.device("cpu"), None)
    records = loaded.task.records(dataset, result["outputs"], loaded.label_names)
    metrics = result["metrics"]
    if loaded.task.text_answers and loaded.recipe.similarity.enabled:
        metrics["similarity"] = score_records(records, loaded.recipe.similarity, histogram, title=Path(path).name)
    if loaded.task.text_answers and loaded.recipe.judge.enabled:
        metrics["judge"] = judge_records(records, loaded.recipe.judge)
    return metrics, records, skipped


def predict_texts(loaded: LoadedRun, texts: list[str], pairs: list[str] | None = None,
                  backend: str = "torch") -> list[dict]:
    """Label (and probabilities) or score for each text, in input order, on PyTorch or the ONNX export."""
    from slingshot.predictor import Predictor

    results = Predictor(loaded, backend=backend).predict(texts, pairs)  # type: ignore[arg-type]
    return [_record(i + 1, text, pairs[i] if pairs else None, None, result, loaded.label_names)
            for i, (text, result) in enumerate(zip(texts, results))]


def predict_labels(loaded: LoadedRun, texts: list[str], pairs: list[str] | None = None) -> list:
    """Just the predicted label name (or number, for regression) of each text, in input order; the fast path
    for comparisons and latency measurements."""
    from slingshot.predictor import Predictor

    return Predictor(loaded).labels(texts, pairs)


def _record(row: int, text: str, pair: str | None, gold: Any, result: dict, label_names: list[str] | None) -> dict:
    record: dict[str, Any] = {"row": row, "text": text}
    if pair is not None:
        record["text_pair"] = pair
    if gold is not None:
        record["gold"] = float(gold) if label_names is None else label_names[int(gold)]
    if label_names is None:
        record["predicted"] = result["score"]
    else:
        record.update(predicted=result["label"], probability=result["probability"],
                      probabilities=result["probabilities"])
    return record


def predict_answers(loaded: LoadedRun, questions: list[str], contexts: list[str], backend: str = "torch") -> list[dict]:
    """The answer span (with its score and character start) of each question in its context, in input order, on
    PyTorch or the ONNX export. Raises DataError when no question has a non-empty context."""
    from slingshot.qa_data import load_qa_examples

    examples = [{"question": q, "context": c} for q, c in zip(questions, contexts)]
    dataset, _ = load_qa_examples(examples, "--question/--context", need_answers=False)
    return _answer(loaded, dataset, backend)


def _answer(loaded: LoadedRun, dataset, backend: str) -> list[dict]:
    from slingshot.predictor import QAPredictor

    predictor = QAPredictor(loaded, backend=backend)  # type: ignore[arg-type]
    outputs = predictor.outputs(list(dataset["question"]), list(dataset["context"]))
    return loaded.task.records(dataset, outputs, loaded.label_names)


def predict_file(loaded: LoadedRun, path: str, backend: str = "torch") -> tuple[list[dict], Skipped]:
    """Predictions for every non-empty text of a file (labels, when present, are kept as `gold`)."""
    dataset, skipped = load_file(path, loaded.recipe, loaded.label_names, need_label=None)
    if loaded.task.name == "extractive_qa":
        return _answer(loaded, dataset, backend), skipped
    if loaded.task.name not in ("classification", "regression"):
        return predict_dataset(loaded, dataset), skipped
    from slingshot.predictor import Predictor

    texts = list(dataset["text"])
    pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
    gold = list(dataset["label"]) if "label" in dataset.column_names else [None] * len(texts)
    results = Predictor(loaded, backend=backend).predict(texts, pairs)  # type: ignore[arg-type]
    rows = list(dataset["row"]) if "row" in dataset.column_names else list(range(1, len(texts) + 1))
    return [_record(rows[i], texts[i], pairs[i] if pairs else None, gold[i], results[i], loaded.label_names)
            for i in range(len(texts))], skipped


def predict_prompts(loaded: LoadedRun, prompts: list[str], **decoding: Any) -> list[dict]:
    """The generated answer of each prompt (generation and seq2seq runs), in input order, prompted as in training.

    decoding overrides the recipe's generation settings for this call: max_new_tokens, temperature, top_p, num_beams.
    """
    from slingshot.chat_data import prompts_dataset
    from slingshot.predictor import decoding_settings

    settings = decoding_settings(loaded.recipe.generation, **decoding)
    recipe = loaded.recipe.model_copy(update={"generation": settings})
    task = get_task(recipe.task, recipe)
    return predict_dataset(LoadedRun(loaded.run, recipe, task, loaded.model, loaded.tokenizer, loaded.label_names),
                    prompts_dataset(prompts, settings))


def predict_dataset(loaded: LoadedRun, dataset) -> list[dict]:
    """The run's records (prediction and what it was asked) for a dataset in the run's own columns."""
    from slingshot.inference import forward_logits

    encoded = loaded.task.prepare({"data": dataset}, loaded.tokenizer, loaded.recipe)["data"]
    collate = loaded.task.collator(loaded.tokenizer)
    if isinstance(loaded.task, GeneratingTask):
        outputs = loaded.task.generate(loaded.model, encoded, collate, torch.device("cpu"), None)
    else:
        outputs = loaded.task.outputs(forward_logits(loaded.model, encoded, collate, forward=loaded.task.forward), encoded)
    return loaded.task.records(dataset, outputs, loaded.label_names)
