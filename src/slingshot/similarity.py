"""Answer similarity: is a predicted answer close in meaning to the reference, even when the words differ?

Both texts are embedded with a sentence-embedding model (default all-MiniLM-L6-v2: mean of the token vectors, then
L2-normalised, as its sentence-transformers configuration does) and compared by cosine. A question with several
reference answers takes the best match, as EM and F1 take the best gold answer. Scores fall into acceptance bands:
at or above `acceptable` (default 0.5) acceptable, at or above `borderline` (0.4) borderline, below it unacceptable.
An empty prediction (no answer found) scores 0.0: it says nothing, whatever its embedding would be.

The math (`cosine_scores`, `band_counts`, `similarity_report`) is pure; `embed_texts` and `draw_histogram` do the I/O.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slingshot.errors import DataError
from slingshot.recipe import SimilaritySection

BANDS = ("acceptable", "borderline", "unacceptable")
PREDICTION_COLUMNS = ("prediction", "predicted")
REFERENCE_COLUMNS = ("reference", "references", "gold")


# ---------------------------------------------------------------------------------------------------- embedding


def embedding_max_tokens(model_path: Path, tokenizer) -> int:
    """sentence-transformers' max_seq_length when the folder has it (256 for all-MiniLM-L6-v2), else the tokenizer's."""
    config = model_path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8")).get("max_seq_length", 256))
    limit = getattr(tokenizer, "model_max_length", 512)
    return int(limit) if limit and limit < 100_000 else 512


def embed_texts(texts: list[str], model_name: str, batch_size: int = 64) -> np.ndarray:
    """Unit-length sentence embeddings, (texts, dim), by mean pooling over real tokens. Raises ModelError."""
    import torch
    from transformers import AutoModel

    from slingshot.models import load_tokenizer, resolve_model

    resolved = resolve_model(model_name)
    tokenizer = load_tokenizer(resolved.path)
    model = AutoModel.from_pretrained(str(resolved.path)).eval()
    max_tokens = embedding_max_tokens(resolved.path, tokenizer)
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: little padding
    vectors: list[np.ndarray] = [np.zeros(0)] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in indices], padding=True, truncation=True, max_length=max_tokens,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (batch, seq, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (batch, dim)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for position, index in enumerate(indices):
                vectors[index] = pooled[position].numpy()
    return np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- pure math


def cosine_scores(predictions: list[str], references: list[list[str]], vectors: dict[str, np.ndarray]) -> list[float]:
    """Per pair, the best cosine between the prediction and any of its references (0.0 for an empty prediction)."""
    scores = []
    for prediction, candidates in zip(predictions, references):
        if not prediction.strip():
            scores.append(0.0)
            continue
        p = vectors[prediction]
        best = max(float(np.dot(p, vectors[r]) / max(np.linalg.norm(p) * np.linalg.norm(vectors[r]), 1e-12))
                   for r in candidates)
        scores.append(best)
    return scores


def band_of(score: float, acceptable: float, borderline: float) -> str:
    if score >= acceptable:
        return "acceptable"
    return "borderline" if score >= borderline else "unacceptable"


def band_counts(scores: list[float], acceptable: float, borderline: float) -> dict[str, int]:
    counts = dict.fromkeys(BANDS, 0)
    for score in scores:
        counts[band_of(score, acceptable, borderline)] += 1
    return counts


def similarity_report(scores: list[float], predictions: list[str], references: list[list[str]],
                      settings: SimilaritySection, rows: list[Any] | None = None) -> dict[str, Any]:
    """Counts and shares per band, mean and median, and the `settings.worst` lowest-scoring pairs."""
    counts = band_counts(scores, settings.acceptable, settings.borderline)
    total = len(scores)
    rows = rows if rows is not None else list(range(1, total + 1))
    worst = sorted(range(total), key=lambda i: (scores[i], i))[: settings.worst]
    return {
        "model": settings.model,
        "thresholds": {"acceptable": settings.acceptable, "borderline": settings.borderline},
        "pairs": total,
        "counts": counts,
        "shares": {band: (count / total if total else 0.0) for band, count in counts.items()},
        "mean": float(np.mean(scores)) if total else 0.0,
        "median": float(np.median(scores)) if total else 0.0,
        "worst": [{"row": rows[i], "prediction": predictions[i], "reference": references[i],
                   "similarity": round(scores[i], 4)} for i in worst],
    }


# ---------------------------------------------------------------------------------------------------- output


def draw_histogram(scores: list[float], settings: SimilaritySection, path: Path, title: str = "") -> None:
    """A PNG histogram of the similarities with each band shaded and the thresholds drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot, no global backend switch, works without a display.
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    low = min(0.0, min(scores, default=0.0))
    axes.axvspan(low, settings.borderline, color="#d62728", alpha=0.08)
    axes.axvspan(settings.borderline, settings.acceptable, color="#ff7f0e", alpha=0.10)
    axes.axvspan(settings.acceptable, 1.0, color="#2ca02c", alpha=0.08)
    axes.hist(scores, bins=np.linspace(low, 1.0, 41), color="#1f77b4", edgecolor="white")
    counts = band_counts(scores, settings.acceptable, settings.borderline)
    total = max(len(scores), 1)
    for value, label in ((settings.acceptable, "acceptable"), (settings.borderline, "borderline")):
        axes.axvline(value, color="black", linestyle="--", linewidth=1)
        axes.text(value, 1.0, f" {label} ≥ {value:g}", transform=axes.get_xaxis_transform(), va="top", fontsize=8)
    axes.set_xlim(low, 1.0)
    axes.set_xlabel("cosine similarity of predicted and reference answer")
    axes.set_ylabel("answers")
    shares = ", ".join(f"{band} {counts[band] / total:.0%}" for band in BANDS)
    axes.set_title(f"{title + ': ' if title else ''}{len(scores)} answers, {shares}", fontsize=9)
    figure.tight_layout()
    figure.savefig(str(path), format="png")


def answer_similarity(predictions: list[str], references: list[list[str]], settings: SimilaritySection, *,
                      histogram: Path | None = None, rows: list[Any] | None = None, title: str = "") -> tuple[dict, list[float]]:
    """Embed, score and summarise prediction/reference pairs; draw the histogram when a path is given."""
    texts = sorted({t for t in predictions if t.strip()} | {r for refs in references for r in refs})
    embedded = embed_texts(texts, settings.model)
    vectors = dict(zip(texts, embedded))
    scores = cosine_scores(predictions, references, vectors)
    report = similarity_report(scores, predictions, references, settings, rows)
    if histogram is not None:
        draw_histogram(scores, settings, histogram, title)
        report["histogram"] = str(histogram)
    return report, scores


def score_records(records: list[dict], settings: SimilaritySection, histogram: Path | None, title: str = "") -> dict:
    """Similarity of each record's `predicted` to its `gold` answers, added to the record; returns the report."""
    scored = [r for r in records if r.get("gold")]
    report, scores = answer_similarity([r["predicted"] for r in scored], [r["gold"] for r in scored], settings,
                                       histogram=histogram, rows=[r.get("row") for r in scored], title=title)
    for record, score in zip(scored, scores):
        record["similarity"] = round(score, 4)
    return report


def read_prediction_pairs(path: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Predictions and references of a JSONL file (columns prediction/predicted and reference/references/gold).

    A reference may be one string or a list of strings (any of them may match). Raises DataError naming the line.
    """
    from slingshot.data import read_rows

    rows = read_rows(path)
    prediction_column = next((c for c in PREDICTION_COLUMNS if c in rows.columns), None)
    reference_column = next((c for c in REFERENCE_COLUMNS if c in rows.columns), None)
    if prediction_column is None or reference_column is None:
        raise DataError(f"{rows.source}: needs a prediction column ({'/'.join(PREDICTION_COLUMNS)}) and a reference "
                        f"column ({'/'.join(REFERENCE_COLUMNS)}); columns found: {', '.join(rows.columns) or '(none)'}",
                        'write one {"prediction": ..., "reference": ...} object per line')
    predictions, references = [], []
    for record, line in zip(rows.records, rows.lines):
        prediction, reference = record.get(prediction_column), record.get(reference_column)
        if isinstance(reference, str):
            reference = [reference]
        if not isinstance(prediction, str) and prediction is not None:
            raise DataError(f"{rows.source}:{line}: {prediction_column} must be a string, got {type(prediction).__name__}")
        if not isinstance(reference, list) or not reference or not all(isinstance(r, str) and r.strip() for r in reference):
            raise DataError(f"{rows.source}:{line}: {reference_column} must be a non-empty string or list of strings",
                            "give every prediction its reference answer")
        predictions.append(prediction or "")
        references.append(reference)
    if not predictions:
        raise DataError(f"{rows.source}: no prediction/reference pairs", "add one JSON object per line")
    return predictions, references, rows.lines
