"""Using a finished run: load its model, score a labelled file, predict texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import yaml

from slingshot.data import Skipped, load_file
from slingshot.recipe import Recipe, recipe_from_dict
from slingshot.rundir import RunDir, find_run
from slingshot.tasks import Task, get_task
from slingshot.train import default_threads, evaluate_split


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
    raw = yaml.safe_load(run.recipe.read_text(encoding="utf-8")) if run.recipe.is_file() else {}
    recipe = recipe_from_dict(raw, source=str(run.recipe))
    task = get_task(recipe.task, recipe.train.method)
    tokenizer = load_tokenizer(run.model)
    model = task.load(run.model)
    label_names = None if recipe.task == "regression" else [model.config.id2label[i] for i in range(model.config.num_labels)]
    return LoadedRun(run, recipe, task, model, tokenizer, label_names)


def evaluate_file(loaded: LoadedRun, path: str) -> tuple[dict[str, Any], list[dict], Skipped]:
    """Metrics and per-example records of the run's model on any labelled file with the run's columns."""
    dataset, skipped = load_file(path, loaded.recipe, loaded.label_names, need_label=True)
    encoded = loaded.task.prepare({"data": dataset}, loaded.tokenizer, loaded.recipe)["data"]
    result = evaluate_split(loaded.task, loaded.model, encoded, loaded.task.collator(loaded.tokenizer),
                            loaded.label_names, torch.device("cpu"), None)
    records = loaded.task.records(dataset, result["outputs"], loaded.label_names)
    return result["metrics"], records, skipped


def predict_texts(loaded: LoadedRun, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
    """Label (and probabilities) or score for each text, in input order."""
    from datasets import Dataset

    columns: dict[str, list] = {"text": texts, "row": list(range(1, len(texts) + 1))}
    if pairs is not None:
        columns["text_pair"] = pairs
    return _predict(loaded, Dataset.from_dict(columns))


def predict_labels(loaded: LoadedRun, texts: list[str], pairs: list[str] | None = None) -> list:
    """Just the predicted label name (or number, for regression) of each text, in input order; the fast path
    for comparisons and latency measurements."""
    from slingshot.inference import encode_texts, forward_logits
    from slingshot.tasks.classification import _model_max_length

    max_length = min(loaded.recipe.model.max_length, _model_max_length(loaded.tokenizer))
    encoded = encode_texts(loaded.tokenizer, texts, pairs, max_length)
    logits = forward_logits(loaded.model, encoded, loaded.task.collator(loaded.tokenizer))
    if loaded.label_names is None:
        return [float(value) for value in logits[:, 0]]
    return [loaded.label_names[int(index)] for index in logits.argmax(-1)]


def predict_file(loaded: LoadedRun, path: str) -> tuple[list[dict], Skipped]:
    """Predictions for every non-empty text of a file (labels, when present, are kept as `gold`)."""
    dataset, skipped = load_file(path, loaded.recipe, loaded.label_names, need_label=None)
    return _predict(loaded, dataset), skipped


def _predict(loaded: LoadedRun, dataset) -> list[dict]:
    from slingshot.inference import forward_logits

    encoded = loaded.task.prepare({"data": dataset}, loaded.tokenizer, loaded.recipe)["data"]
    logits = forward_logits(loaded.model, encoded, loaded.task.collator(loaded.tokenizer))
    return loaded.task.records(dataset, loaded.task.outputs(logits), loaded.label_names)
