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


def model_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The `logits` of a model's output: what sequence classifiers return."""
    return model(**batch).logits


@torch.inference_mode()
def forward_logits(
    model: torch.nn.Module,
    encoded: Dataset,
    collate,
    *,
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] = model_logits,
    device: torch.device | str = "cpu",
    tokens_per_batch: int = EVAL_TOKENS_PER_BATCH,
    max_batch_size: int = EVAL_MAX_BATCH_SIZE,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Logits for every row of `encoded` (which has a `length` column), in the order of its rows.

    One array (rows, k) for per-example logits; a list of (length, k) arrays, one per row, for per-token logits.
    """
    was_training = model.training
    model.eval()
    lengths = encoded["length"]
    batches = token_budget_batches(lengths, tokens_per_batch, max_batch_size, shuffle=False)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in encoded.column_names]
    data = {c: encoded[c] for c in columns}  # plain lists: per-row Arrow access is slow
    results: list[np.ndarray] = [np.zeros(0)] * len(encoded)
    per_token = False
    device = torch.device(device)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        for indices in batches:
            batch = collate([{c: data[c][i] for c in columns} for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = forward(model, batch).float().cpu().numpy()
            per_token = logits.ndim == 3
            for position, index in enumerate(indices):
                results[index] = logits[position, : lengths[index]] if per_token else logits[position]
    model.train(was_training)
    if per_token:
        return results
    return np.stack(results) if results else np.zeros((0, 0), dtype=np.float32)
