"""Tasks: the only code that knows what a batch means. The loop, CLI and run directory know nothing of labels.

Adding a task is adding one module that satisfies `Task` and one entry in `TASKS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from datasets import Dataset

from slingshot.errors import RecipeError
from slingshot.models import ResolvedModel
from slingshot.recipe import Recipe


class Task(Protocol):
    """What the training loop, `evaluate` and `predict` need from a task."""

    name: str
    text_answers: bool  # predictions are text, so answer-similarity evaluation applies
    batch_columns: tuple[str, ...]  # columns of a prepared training row that the collator reads

    def prepare(self, splits: dict[str, Dataset], tokenizer, recipe: Recipe) -> dict[str, Dataset]:
        """Tokenize every split; each row gets the model inputs, `labels` when known, and a `length` column."""
        ...

    def build_model(self, resolved: ResolvedModel, recipe: Recipe, label_names: list[str] | None) -> torch.nn.Module:
        """The model to train, with PEFT applied when recipe.train.method asks for it."""
        ...

    def load_model(self, path: Path) -> torch.nn.Module:
        """The model a finished run saved in `path`, in eval mode (for `evaluate` and `predict`)."""
        ...

    def collator(self, tokenizer):
        """A callable turning a list of prepared rows into a batch of tensors."""
        ...

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of a batch of inputs: (batch, k) per example, or (batch, seq, k) per token."""
        ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Summed loss over the batch and the number of items it sums over (examples or tokens), or the sum of
        their weights when the batch carries per-example `weights`."""
        ...

    def fit_head(self, model: torch.nn.Module, encoded: dict[str, Dataset], collate, recipe: Recipe,
                 device: torch.device, amp_dtype: torch.dtype | None) -> None:
        """Fit a head that the loss does not train, on the prepared splits, before an evaluation; else nothing."""
        ...

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        """The number of items `loss` will sum over in this batch, known before the forward pass: the loop divides
        by the total of an accumulation window, so each item weighs the same however the window is cut."""
        ...

    def outputs(self, logits: np.ndarray | list[np.ndarray], encoded: Dataset) -> Any:
        """Turn the logits of one prepared split (rows in order, from `forward_logits`) into predictions.

        A GeneratingTask has `generate(model, encoded, collate, device, autocast_dtype)` instead."""
        ...

    def metrics(self, predictions: Any, encoded: Dataset, label_names: list[str] | None) -> dict[str, Any]:
        """Scores of predictions against the references the prepared split carries."""
        ...

    def eval_loss(self, logits: np.ndarray | list[np.ndarray], encoded: Dataset) -> float:
        """The training loss, averaged per item, on a prepared evaluation split."""
        ...

    def records(self, dataset: Dataset, predictions: Any, label_names: list[str] | None) -> list[dict]:
        """One predictions.jsonl line per example of the (untokenized) split."""
        ...

    def save(self, model: torch.nn.Module, tokenizer, path: Path, adapter_path: Path | None = None) -> None:
        """A Hugging Face folder that loads without Slingshot (and the bare adapter, for PEFT models)."""
        ...


@runtime_checkable
class GeneratingTask(Protocol):
    """A task whose predictions are decoded token by token (generation, seq2seq): it has `generate` instead of
    `outputs`, and its `forward` gives what the evaluation loss needs."""

    forward_columns: tuple[str, ...]  # columns of a prepared row that `forward` reads (seq2seq: the labels too)

    def generate(self, model: torch.nn.Module, encoded: Dataset, collate, device: torch.device,
                 autocast_dtype: torch.dtype | None) -> Any:
        """Predictions for every row of a prepared split, in row order; what `outputs` gives for other tasks."""
        ...


def get_task(name: str, recipe: Recipe | None = None, method: str | None = None) -> Task:
    """The task of a recipe's `task` and `train.method` (fewshot has its own classification task), with the
    recipe's settings for it (defaults without a recipe)."""
    from slingshot.recipe import GenerationSection, QASection
    from slingshot.tasks.classification import ClassificationTask
    from slingshot.tasks.extractive_qa import ExtractiveQATask
    from slingshot.tasks.fewshot import FewShotTask
    from slingshot.tasks.generation import GenerationTask
    from slingshot.tasks.seq2seq import Seq2SeqTask

    method = method or (recipe.train.method if recipe is not None else "full")
    if method == "fewshot":
        if name != "classification":
            raise RecipeError(f"train.method fewshot is for classification, not {name}", "use method full or lora")
        return FewShotTask()
    distill = recipe.train.distill if recipe is not None else None
    tasks: dict[str, Task] = {
        "classification": ClassificationTask(regression=False, distill=distill),
        "regression": ClassificationTask(regression=True, distill=distill),
        "extractive_qa": ExtractiveQATask(recipe.qa if recipe is not None else QASection(), distill),
        "generation": GenerationTask(recipe.generation if recipe is not None else GenerationSection(),
                                     seed=recipe.train.seed if recipe is not None else 0),
        "seq2seq": Seq2SeqTask(recipe.generation if recipe is not None else GenerationSection(),
                               seed=recipe.train.seed if recipe is not None else 0),
    }
    if name not in tasks:
        raise RecipeError(f"unknown task '{name}'", f"use one of: {', '.join(tasks)}")
    return tasks[name]
