"""Classification and regression metrics: pure functions of predictions and references."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def classification_metrics(predicted: Sequence[int], gold: Sequence[int], label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = gold)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted, gold = np.asarray(predicted), np.asarray(gold)
    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, average=None, zero_division=0
    )
    present = support > 0  # macro-F1 over the classes that occur in the references, as sklearn's default does
    return {
        "accuracy": float((predicted == gold).mean()) if len(gold) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(gold, predicted, labels=labels).tolist(),
        "labels": list(label_names),
        "examples": int(len(gold)),
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
