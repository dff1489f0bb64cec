"""Extractive question answering: the answer is a span of the context, found by a start and an end logit per token.

    question + context --tokenize--> overlapping windows --model--> start/end logits per token
                       --decode--> best span over all windows of a question --> answer text (characters of the context)

A context longer than a window is cut into windows that share `qa.stride` tokens, so an answer cut by one window's
edge is whole in the next. Training labels come from the fast tokenizer's offset mapping; a window that does not hold
the whole (first) gold answer points at [CLS], as in BERT's SQuAD recipe (Devlin et al., 2019, section 4.2).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from slingshot.batching import PaddingCollator
from slingshot.errors import ModelError, RecipeError
from slingshot.metrics import normalize_answer, qa_metrics
from slingshot.models import ResolvedModel
from slingshot.recipe import DistillSection, QASection, Recipe
from slingshot.tasks.classification import _model_max_length, apply_lora, qlora_quantization, save_model_folder

NOT_CONTEXT = -1  # offset of a token that is not context (question, special tokens): never part of an answer


@dataclass(frozen=True)
class Span:
    text: str
    start: int  # character offset in the context
    score: float  # start logit + end logit


def cut_question(question: str, tokenizer, max_tokens: int) -> tuple[str, bool]:
    """The question cut to its first `max_tokens` tokens (at a character boundary), and whether it was cut."""
    encoded = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= max_tokens:
        return question, False
    return question[: offsets[max_tokens - 1][1]], True


def answer_tokens(offsets: list, sequence_ids: list, start_char: int, end_char: int) -> tuple[int, int]:
    """Token indices of the first and last answer token in one window, or (0, 0) ([CLS]) when it is not all inside."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(i for i in context if offsets[i][1] > start_char)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


def window_rows(batch: dict[str, list], indices: list[int], tokenizer, max_length: int,
                settings: QASection) -> dict[str, list]:
    """The windows of a batch of examples (question, context, answers, answer_starts): model inputs, labels
    [start, end], length, its example's index, context and answers, and the character offsets of its context tokens."""
    cut = [cut_question(q, tokenizer, settings.max_question_tokens) for q in batch["question"]]
    questions = [q.lstrip() for q, _ in cut]  # leading spaces only shift offsets; BERT's recipe drops them
    encoded = tokenizer(questions, batch["context"], truncation="only_second", max_length=max_length,
                        stride=settings.stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    # context and gold answers ride along (per window) so that decoding and scoring need only this split
    keys = ("labels", "length", "example_index", "offsets", "question_cut", "context", "answers")
    windows: dict[str, list] = {key: [] for key in keys}
    for window, example in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence_ids = encoded.sequence_ids(window)
        offsets = encoded["offset_mapping"][window]
        answers, starts = batch["answers"][example], batch["answer_starts"][example]
        # SQuAD trains on the first gold answer; the others only count when scoring
        label = answer_tokens(offsets, sequence_ids, starts[0], starts[0] + len(answers[0])) if answers else (0, 0)
        windows["labels"].append(list(label))
        windows["length"].append(len(encoded["input_ids"][window]))
        windows["example_index"].append(indices[example])
        windows["offsets"].append([list(o) if s == 1 else [NOT_CONTEXT, NOT_CONTEXT]
                                   for o, s in zip(offsets, sequence_ids)])
        windows["question_cut"].append(cut[example][1])
        windows["context"].append(batch["context"][example])
        windows["answers"].append(answers)
    model_inputs = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return {**model_inputs, **windows}


def encode_windows(dataset: Dataset, tokenizer, max_length: int, settings: QASection) -> Dataset:
    """One row per window (see window_rows) of every example of a split."""

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        return window_rows(batch, indices, tokenizer, max_length, settings)

    return dataset.map(encode, batched=True, with_indices=True, batch_size=1000, remove_columns=dataset.column_names,
                       keep_in_memory=True)


def span_candidates(windows: list[tuple[np.ndarray, np.ndarray]], context: str, n_best: int,
                    max_answer_tokens: int) -> list[Span]:
    """Every valid span of one question over all its windows, best first.

    Each window is (logits (length, 2): start and end per token, offsets (length, 2) with -1 outside the context).
    Candidates are the `n_best` best starts and ends among context tokens; a span needs end >= start and at most
    `max_answer_tokens` tokens. Its score is start logit + end logit (log-space product of the two probabilities
    up to a per-window constant, as in BERT's SQuAD decoding). A span found in two overlapping windows (the same
    characters of the context) is kept once, with its better score.
    """
    best_by_place: dict[tuple[int, int], Span] = {}
    for logits, offsets in windows:
        is_context = offsets[:, 0] >= 0
        if not is_context.any():
            continue
        start_logits = np.where(is_context, logits[:, 0], -np.inf)
        end_logits = np.where(is_context, logits[:, 1], -np.inf)
        count = min(n_best, int(is_context.sum()))
        starts = np.argsort(-start_logits, kind="stable")[:count]
        ends = np.argsort(-end_logits, kind="stable")[:count]
        scores = start_logits[starts][:, None] + end_logits[ends][None, :]  # (starts, ends)
        width = ends[None, :] - starts[:, None] + 1
        valid = (width >= 1) & (width <= max_answer_tokens) & np.isfinite(scores)
        for s, e in zip(*np.nonzero(valid)):
            first, last = int(offsets[starts[s], 0]), int(offsets[ends[e], 1])
            score = float(scores[s, e])
            known = best_by_place.get((first, last))
            if known is None or score > known.score:
                best_by_place[(first, last)] = Span(context[first:last], first, score)
    return sorted(best_by_place.values(), key=lambda span: -span.score)


def best_span(windows: list[tuple[np.ndarray, np.ndarray]], context: str, n_best: int, max_answer_tokens: int) -> Span | None:
    """The highest-scoring span over all windows of one question (see span_candidates), or None when no candidate
    pair is a valid span."""
    candidates = span_candidates(windows, context, n_best, max_answer_tokens)
    return candidates[0] if candidates else None


def expected_f1_span(candidates: list[Span], top: int) -> Span | None:
    """Of the `top` best candidates, the one with the highest expected token F1 against the model's own answer
    distribution (minimum-Bayes-risk decoding): softmax over the candidates' scores, then for each candidate the
    probability-weighted F1 against all of them. Where the model hesitates between boundaries it picks the span the
    likely answers overlap most, rather than the single likeliest boundary pair; that is what token F1 rewards.
    """
    candidates = candidates[:top]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    scores = np.array([span.score for span in candidates])
    probability = np.exp(scores - scores.max())
    probability /= probability.sum()
    tokens = [normalize_answer(span.text).split() for span in candidates]
    bags = [Counter(t) for t in tokens]  # metrics.token_f1 per pair re-normalises each text: 5x slower here
    overlap = np.zeros((len(candidates), len(candidates)))
    for i in range(len(candidates)):
        for j in range(i, len(candidates)):
            common = sum((bags[i] & bags[j]).values())
            if common:
                overlap[i, j] = overlap[j, i] = 2 * common / (len(tokens[i]) + len(tokens[j]))  # token F1
    return candidates[int(np.argmax(overlap @ probability))]


class ExtractiveQATask:
    """Start/end span extraction with AutoModelForQuestionAnswering; EM/F1 over gold answers; text answers."""

    name = "extractive_qa"
    text_answers = True  # predictions are strings: answer-similarity evaluation applies
    batch_columns = ("input_ids", "attention_mask", "token_type_ids", "labels", "teacher")

    def __init__(self, settings: QASection, distill: DistillSection | None = None):
        self.settings = settings
        self.distill = distill or DistillSection()

    # ------------------------------------------------------------------------------------------- data

    def prepare(self, splits: dict[str, Dataset], tokenizer, recipe: Recipe) -> dict[str, Dataset]:
        max_length = self.window_length(tokenizer, recipe)
        return {split: encode_windows(dataset, tokenizer, max_length, self.settings) for split, dataset in splits.items()}

    def window_length(self, tokenizer, recipe: Recipe) -> int:
        """Tokens per window: model.max_length within the model's own limit. Raises ModelError without a fast
        tokenizer, RecipeError when a window leaves no more room for context than qa.stride."""
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError("extractive_qa needs a fast (Rust) tokenizer for character offsets",
                             "use a model folder with a tokenizer.json")
        max_length = min(recipe.model.max_length, _model_max_length(tokenizer))
        room = max_length - self.settings.max_question_tokens - tokenizer.num_special_tokens_to_add(pair=True)
        if room <= self.settings.stride:
            raise RecipeError(f"windows of {max_length} tokens leave {room} for context after a "
                              f"{self.settings.max_question_tokens}-token question: not more than qa.stride "
                              f"{self.settings.stride}", "raise model.max_length, or lower qa.stride or qa.max_question_tokens")
        return max_length

    def question_windows(self, questions: list[str], contexts: list[str], tokenizer, max_length: int) -> dict[str, list]:
        """The windows of questions to answer (no gold answers) as prepare makes them, as plain lists rather than a
        Dataset: what `forward_logits` and `outputs` take, and all a served request pays for."""
        batch = {"question": questions, "context": contexts, "answers": [[] for _ in questions],
                 "answer_starts": [[] for _ in questions]}
        return window_rows(batch, list(range(len(questions))), tokenizer, max_length, self.settings)

    def fit_head(self, model, encoded, collate, recipe, device, amp_dtype) -> None:
        """Nothing to fit: the loss trains the span head."""

    def collator(self, tokenizer) -> PaddingCollator:
        return PaddingCollator(tokenizer.pad_token_id, torch.long)

    # ------------------------------------------------------------------------------------------- model

    def build_model(self, resolved: ResolvedModel, recipe: Recipe, label_names: list[str] | None) -> torch.nn.Module:
        from transformers import AutoModelForQuestionAnswering
        from transformers.utils import logging as hf_logging

        quantized = {"quantization_config": qlora_quantization()} if recipe.train.method == "qlora" else {}
        # The new span head is reported as missing weights: expected, and noise for our users.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForQuestionAnswering.from_pretrained(str(resolved.path), **quantized)
        except (ValueError, OSError) as exc:
            raise ModelError(f"{resolved.name} cannot be used for extractive QA: {str(exc).splitlines()[0][:200]}",
                             "choose an encoder of the BERT family") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        if recipe.train.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        if recipe.train.method in ("lora", "qlora"):
            from peft import TaskType

            model = apply_lora(model, recipe, TaskType.QUESTION_ANS)
        return model

    def load_model(self, path: Path) -> torch.nn.Module:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(str(path)).eval()

    # ------------------------------------------------------------------------------------------- training

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Start and end logits, (batch, seq, 2)."""
        output = model(**batch)
        return torch.stack([output.start_logits, output.end_logits], dim=-1)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        labels = batch.pop("labels")  # (batch, 2)
        teacher = batch.pop("teacher", None)  # (batch, seq, 2) start/end probabilities (slingshot.distill)
        logits = self.forward(model, batch).float()
        # Padding never competes for the span: the loss then matches decoding, which sees each window unpadded.
        logits = logits.masked_fill(batch["attention_mask"][..., None] == 0, torch.finfo(logits.dtype).min)
        start_loss = F.cross_entropy(logits[..., 0], labels[:, 0], reduction="none")
        end_loss = F.cross_entropy(logits[..., 1], labels[:, 1], reduction="none")
        per_window = (start_loss + end_loss) / 2
        if teacher is not None:
            from slingshot.distill import soft_loss

            # over the window's tokens, start and end apart: (batch, 2, seq)
            soft = soft_loss(logits.transpose(1, 2), teacher.transpose(1, 2), self.distill.temperature).mean(-1)
            per_window = (1 - self.distill.alpha) * per_window + self.distill.alpha * soft
        return per_window.sum(), labels.shape[0]

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["labels"].shape[0])  # windows

    # ------------------------------------------------------------------------------------------- evaluation

    def outputs(self, logits: list[np.ndarray], encoded: Dataset | dict[str, list]) -> dict[str, list]:
        """One answer per question, in the order of the untokenized split; "" when no valid span was found.

        `encoded` is a prepared split, or the plain lists of `question_windows`."""
        example_index = encoded["example_index"]
        offsets = encoded["offsets"]
        count = max(example_index) + 1 if example_index else 0
        windows: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(count)]
        for window, example in enumerate(example_index):
            windows[example].append((logits[window], np.asarray(offsets[window], dtype=np.int64)))
        contexts = self._per_example(encoded, "context", count)
        spans = [self.choose(span_candidates(w, c, self.settings.n_best, self.settings.max_answer_tokens))
                 for w, c in zip(windows, contexts)]
        return {
            "predicted": [s.text if s else "" for s in spans],
            "start": [s.start if s else None for s in spans],
            "score": [round(s.score, 4) if s else None for s in spans],
            "gold": self._per_example(encoded, "answers", count),
            "question_cut": self._per_example(encoded, "question_cut", count),
        }

    def choose(self, candidates: list[Span]) -> Span | None:
        """The answer among a question's candidates (best first), by `qa.decoding`."""
        if self.settings.decoding == "expected_f1":
            return expected_f1_span(candidates, self.settings.n_best)
        return candidates[0] if candidates else None

    @staticmethod
    def _per_example(encoded: Dataset | dict[str, list], column: str, count: int) -> list:
        """A column of the windows, one value per example (the first window's)."""
        values: list = [None] * count
        for example, value in zip(encoded["example_index"], encoded[column]):
            if values[example] is None:
                values[example] = value
        return values

    def metrics(self, outputs: dict[str, list], encoded: Dataset, label_names: list[str] | None) -> dict[str, Any]:
        metrics = qa_metrics(outputs["predicted"], outputs["gold"])
        metrics["no_answer_found"] = sum(1 for s in outputs["start"] if s is None)
        metrics["windows"] = len(encoded)
        return metrics

    def eval_loss(self, logits: list[np.ndarray], encoded: Dataset) -> float:
        """Mean over windows of the start and end cross-entropy at the labels, as in training."""
        losses = []
        for window_logits, (start, end) in zip(logits, encoded["labels"]):
            shifted = window_logits - window_logits.max(axis=0, keepdims=True)
            log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))
            losses.append(-(log_probabilities[start, 0] + log_probabilities[end, 1]) / 2)
        return float(np.mean(losses)) if losses else 0.0

    def records(self, dataset: Dataset, outputs: dict[str, list], label_names: list[str] | None) -> list[dict]:
        """One predictions.jsonl line per question: row, id, question, context, gold answers, predicted, score."""
        rows = []
        for i, example in enumerate(dataset.to_list()):
            record: dict[str, Any] = {"row": example["row"], "id": example["id"], "question": example["question"],
                                      "context": example["context"]}
            if example["answers"]:
                record["gold"] = example["answers"]
            record.update(predicted=outputs["predicted"][i], start=outputs["start"][i], score=outputs["score"][i])
            if outputs["question_cut"][i]:
                record["question_cut"] = True  # longer than qa.max_question_tokens: the model saw its beginning
            rows.append(record)
        return rows

    # ------------------------------------------------------------------------------------------- saving

    def save(self, model: torch.nn.Module, tokenizer, path: Path, adapter_path: Path | None = None) -> None:
        """A folder `pipeline("question-answering", model=path)` loads as it is."""
        save_model_folder(model, tokenizer, path, adapter_path)
