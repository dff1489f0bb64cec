"""Knowledge distillation: a student learns the output distributions of fine-tuned teachers, not only the labels.

    teachers (run folders or models) --forward over the training split, once--> soft targets per row
    student loss = (1 - alpha) x loss on the gold labels + alpha x T^2 x KL(teacher || student), both at temperature T

Hinton et al. (2015). The targets are computed once before training (one teacher forward pass per teacher, not one
per epoch) and ride along in the training split as a `teacher` column, so batching, resuming and `accelerate
launch` need nothing new. Several teachers are averaged (in probability): an ensemble taught to one model, which
costs the student nothing at inference time.

Classification teachers may be any fine-tuned sequence classifier with the same label names (a larger model,
another tokenizer): each reads the texts with its own tokenizer. Extractive QA targets are per token, so a QA
teacher must tokenize exactly as the student does. Regression compares values (mean squared error), no temperature.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from slingshot.errors import ModelError, RecipeError
from slingshot.inference import forward_logits
from slingshot.models import load_tokenizer, resolve_model
from slingshot.recipe import DistillSection, Recipe
from slingshot.tasks.classification import softmax

GENERIC_LABEL = re.compile(r"LABEL_\d+")


def soft_loss(student_logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(teacher || student at temperature T) over the last axis, one value per row. Rows where the teacher
    gives a class probability 0 (padding of per-token targets) add nothing for that class."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_student, teacher_probabilities.float(), reduction="none").sum(-1) * temperature**2


def teacher_model_path(spec: str, recipe: Recipe) -> Path:
    """The model folder of a teacher: a finished run directory of the same task, or any model `resolve_model`
    finds (local folder, Hugging Face cache, packaged weights, hub). Raises a SlingshotError naming the teacher."""
    from slingshot.evaluate import run_recipe
    from slingshot.rundir import RunDir, find_run

    folder = Path(spec)
    if folder.is_dir() and RunDir(folder).recipe.is_file():
        run = find_run(folder)
        task = run_recipe(run).task
        if task != recipe.task:
            raise RecipeError(f"train.distill.teachers: {spec} is a {task} run; this recipe trains {recipe.task}",
                              f"distil from runs of task {recipe.task}")
        return run.model
    try:
        return resolve_model(spec).path
    except ModelError as error:
        raise ModelError(f"train.distill.teachers: {error.message}", error.hint) from None


def label_order(teacher_names: list[str], label_names: list[str], spec: str) -> list[int]:
    """For each of the student's labels, the teacher's output column that holds it."""
    if sorted(teacher_names) == sorted(label_names):
        return [teacher_names.index(name) for name in label_names]
    if len(teacher_names) == len(label_names) and all(GENERIC_LABEL.fullmatch(n) for n in teacher_names):
        return list(range(len(label_names)))  # a model saved without label names: same order assumed
    raise RecipeError(f"train.distill.teachers: {spec} predicts the labels {teacher_names}, the data has {label_names}",
                      "distil from a model fine-tuned on the same labels")


def teacher_targets(recipe: Recipe, task, train_rows: Dataset, train_encoded: Dataset, tokenizer,
                    label_names: list[str] | None, device: torch.device,
                    amp_dtype: torch.dtype | None) -> list:
    """Soft targets for every row of the prepared training split, averaged over the recipe's teachers:
    class probabilities at the temperature (classification), a value (regression), or per token the start and end
    probabilities over the window, (length, 2) (extractive QA)."""
    settings: DistillSection = recipe.train.distill
    total = None
    for spec in settings.teachers:
        path = teacher_model_path(spec, recipe)
        teacher_tokenizer = load_tokenizer(path)
        model = task.load_model(path).to(device)
        if recipe.task == "extractive_qa":
            if teacher_tokenizer.backend_tokenizer.to_str() != tokenizer.backend_tokenizer.to_str():
                raise RecipeError(f"train.distill.teachers: {spec} tokenizes differently from the student "
                                  f"{recipe.model.name}; extractive QA compares them token by token",
                                  "distil from QA models that share the student's tokenizer")
            encoded = train_encoded
        else:
            encoded = task.prepare({"train": train_rows}, teacher_tokenizer, recipe)["train"]
        logits = forward_logits(model, encoded, task.collator(teacher_tokenizer), forward=task.forward,
                                device=device, autocast_dtype=amp_dtype)
        if recipe.task == "extractive_qa":  # per window (length, 2): softmax over the window's tokens
            targets = [softmax(window.T / settings.temperature).T for window in logits]
        elif recipe.task == "regression":
            targets = list(logits[:, 0])
        else:
            names = [model.config.id2label[i] for i in range(model.config.num_labels)]
            order = label_order(names, label_names or [], spec)
            targets = list(softmax(logits[:, order] / settings.temperature))
        total = targets if total is None else [t + u for t, u in zip(total, targets)]
        del model
    count = len(settings.teachers)
    return [np.asarray(t, dtype=np.float32) / count for t in total]


def add_teacher_column(encoded: Dataset, targets: list[np.ndarray]) -> Dataset:
    """The training split with the teachers' targets as a float32 `teacher` column, built from the arrays directly:
    per-token targets of a large QA set are tens of millions of values, too many to pass through Python floats."""
    import pyarrow as pa
    from datasets import concatenate_datasets

    if targets and targets[0].ndim == 2:  # per token: a list of (length, k) rows
        k = targets[0].shape[1]
        flat = np.concatenate(targets).reshape(-1) if targets else np.zeros(0, np.float32)
        tokens = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), k)
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in targets])]).astype(np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), tokens)
    elif targets and targets[0].ndim == 1:  # per example: k probabilities
        column = pa.FixedSizeListArray.from_arrays(pa.array(np.stack(targets).reshape(-1), type=pa.float32()),
                                                   targets[0].shape[0])
    else:  # per example: one value (regression)
        column = pa.array(np.asarray(targets, dtype=np.float32).reshape(-1), type=pa.float32())
    return concatenate_datasets([encoded, Dataset(pa.table({"teacher": column}))], axis=1)
