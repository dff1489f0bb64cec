"""Classification, regression and extractive-QA metrics: pure functions of predictions and references."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


def confusion_matrix(predicted: Sequence[int], gold: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts with gold classes as rows and predicted classes as columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def classification_metrics(predicted: Sequence[int], gold: Sequence[int], label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = gold).

    Computed from the confusion matrix with numpy (same definitions as scikit-learn, zero_division=0): importing
    scikit-learn during training costs ~70 MB of resident memory for four divisions.
    """
    matrix = confusion_matrix(predicted, gold, len(label_names))
    true_positive = np.diag(matrix).astype(float)
    predicted_count = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted_count, out=np.zeros_like(true_positive), where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    # macro-F1 over the classes present in references or predictions, as scikit-learn's default labels do
    present = (support > 0) | (predicted_count > 0)
    total = int(support.sum())
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for name, p, r, f, n in zip(label_names, precision, recall, f1, support)
        },
        "confusion_matrix": matrix.tolist(),
        "labels": list(label_names),
        "examples": total,
    }


def regression_metrics(predicted: Sequence[float], gold: Sequence[float]) -> dict:
    """MAE, RMSE, Pearson and Spearman correlation (NaN-free: 0.0 when a side is constant)."""
    from scipy.stats import pearsonr, spearmanr

    predicted, gold = np.asarray(predicted, dtype=float), np.asarray(gold, dtype=float)
    errors = predicted - gold
    constant = len(gold) < 2 or np.allclose(predicted, predicted[0]) or np.allclose(gold, gold[0])
    return {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(math.sqrt((errors**2).mean())),
        "pearson": 0.0 if constant else float(pearsonr(predicted, gold).statistic),
        "spearman": 0.0 if constant else float(spearmanr(predicted, gold).statistic),
        "examples": int(len(gold)),
    }


# ---------------------------------------------------------------------------------------------------- extractive QA


PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces.

    Same steps as the official evaluate-v1.1.py script (Rajpurkar et al., 2016), so figures compare with papers.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (tokens counted with multiplicity)."""
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:
        # the official script scores this 0 unless both are empty (SQuAD v2 treats empty = empty as a match)
        return float(predicted_tokens == gold_tokens)
    common = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                scorer: Callable[[str, str], float]) -> list[float]:
    """Per prediction, the best `scorer(prediction, reference)` over its references (0.0 when it has none)."""
    return [max((scorer(p, r) for r in refs), default=0.0) for p, refs in zip(predictions, references)]


def qa_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict:
    """Exact match and token F1, each the maximum over a question's gold answers, averaged, in percent (0-100).

    Percent, as SQuAD's official script and the papers that quote it report them.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    em = best_scores(predictions, golds, exact_match)
    f1 = best_scores(predictions, golds, token_f1)
    count = len(predictions)
    return {
        "exact_match": 100.0 * sum(em) / count if count else 0.0,
        "f1": 100.0 * sum(f1) / count if count else 0.0,
        "examples": count,
    }


# ---------------------------------------------------------------------------------------------------- generation


def rouge_tokens(text: str) -> list[str]:
    """Lower-case words of letters and digits, as the `rouge-score` package tokenizes (no stemming)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def longest_common_subsequence(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest sequence of tokens found in both, in order but not necessarily adjacent."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (Lin, 2004): harmonic mean of LCS / prediction length and LCS / reference length, 0 to 1.

    An empty text (after tokenization) scores 0, as in `rouge-score`.
    """
    predicted, gold = rouge_tokens(prediction), rouge_tokens(reference)
    if not predicted or not gold:
        return 0.0
    common = longest_common_subsequence(predicted, gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Exact match and token F1 (SQuAD normalisation) and ROUGE-L, each the best over the references, in percent."""
    metrics = qa_metrics(predictions, references)
    scores = best_scores(predictions, references, rouge_l)
    metrics["rouge_l"] = 100.0 * sum(scores) / len(scores) if scores else 0.0
    return metrics
