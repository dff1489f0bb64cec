"""One inference path: length-sorted batches under a token budget, results returned in input order.

A task's `forward` gives logits per example, (batch, k), or per token, (batch, seq, k) as extractive QA's start and
end logits. Per-token rows are cut back to their own length, so padding never reaches a decoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from datasets import Dataset

from slingshot.batching import token_budget_batches

# Inference keeps no activations for backward, so a batch can hold several times the training budget;
# beyond ~4k tokens larger batches gained no speed here and only raised peak memory.
EVAL_TOKENS_PER_BATCH = 4096
EVAL_MAX_BATCH_SIZE = 256
# What a model's forward pass reads of a prepared row, unless the task says otherwise (seq2seq adds its labels).
FORWARD_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def model_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The `logits` of a model's output: what sequence classifiers return."""
    return model(**batch).logits


@torch.inference_mode()
def forward_logits(
    model: torch.nn.Module,
    encoded: Dataset | dict[str, list],
    collate,
    *,
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] = model_logits,
    device: torch.device | str = "cpu",
    tokens_per_batch: int = EVAL_TOKENS_PER_BATCH,
    max_batch_size: int = EVAL_MAX_BATCH_SIZE,
    autocast_dtype: torch.dtype | None = None,
    columns: tuple[str, ...] = FORWARD_COLUMNS,
) -> np.ndarray | list[np.ndarray]:
    """Logits for every row of `encoded` (a Dataset or a dict of lists, with a `length` column), in row order.

    One array (rows, k) for per-example logits; a list of (length, k) arrays, one per row, for per-token logits.
    `columns` are the ones handed to the collator, where the row has them.
    """
    was_training = model.training
    model.eval()
    lengths = encoded["length"]
    batches = token_budget_batches(lengths, tokens_per_batch, max_batch_size, shuffle=False)
    names = encoded.column_names if isinstance(encoded, Dataset) else list(encoded)
    present = [c for c in columns if c in names]
    data = {c: encoded[c] for c in present}  # plain lists: per-row Arrow access is slow
    results: list[np.ndarray] = [np.zeros(0)] * len(lengths)
    per_token = False
    device = torch.device(device)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        for indices in batches:
            batch = collate([{c: data[c][i] for c in present} for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = forward(model, batch).float().cpu().numpy()
            per_token = logits.ndim == 3
            for position, index in enumerate(indices):
                results[index] = logits[position, : lengths[index]] if per_token else logits[position]
    model.train(was_training)
    if per_token:
        return results
    return np.stack(results) if results else np.zeros((0, 0), dtype=np.float32)


@torch.inference_mode()
def logits_and_embeddings(
    model: torch.nn.Module,
    encoded: Dataset | dict[str, list],
    collate,
    *,
    device: torch.device | str = "cpu",
    tokens_per_batch: int = EVAL_TOKENS_PER_BATCH,
    max_batch_size: int = EVAL_MAX_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (rows, k) and the mean of the last hidden states over real tokens (rows, hidden) from the same
    forward pass, in row order: what active-learning selection needs."""
    was_training = model.training
    model.eval()
    lengths = encoded["length"]
    names = encoded.column_names if isinstance(encoded, Dataset) else list(encoded)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in names]
    data = {c: encoded[c] for c in columns}
    results: list[np.ndarray | None] = [None] * len(lengths)
    pooled: list[np.ndarray | None] = [None] * len(lengths)
    device = torch.device(device)
    for indices in token_budget_batches(lengths, tokens_per_batch, max_batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in collate([{c: data[c][i] for c in columns} for i in indices]).items()}
        output = model(**batch, output_hidden_states=True)
        logits = output.logits.float().cpu().numpy()
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (batch, tokens, 1)
        hidden = output.hidden_states[-1].float()  # (batch, tokens, hidden)
        means = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()  # (batch, hidden)
        for position, index in enumerate(indices):
            results[index] = logits[position]
            pooled[index] = means[position]
    model.train(was_training)
    if not results:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    return np.stack(results), np.stack(pooled)


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, list]:
    """Tokenized texts with a `length` column, ready for forward_logits; no Dataset round trip, so a single text
    costs only its tokenization and forward pass (what a served request pays)."""
    encoded = dict(tokenizer(texts, pairs, truncation=True, max_length=max_length))
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded
