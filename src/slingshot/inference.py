"""One inference path: length-sorted batches under a token budget, results returned in input order."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from datasets import Dataset

from slingshot.batching import token_budget_batches

# Inference keeps no activations for backward, so a batch can hold several times the training budget;
# beyond ~4k tokens larger batches gained no speed here and only raised peak memory.
EVAL_TOKENS_PER_BATCH = 4096
EVAL_MAX_BATCH_SIZE = 256


def forward_logits(
    model: torch.nn.Module,
    encoded: Dataset | dict[str, list],
    collate,
    *,
    device: torch.device | str = "cpu",
    tokens_per_batch: int = EVAL_TOKENS_PER_BATCH,
    max_batch_size: int = EVAL_MAX_BATCH_SIZE,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Logits for every row of `encoded` (a Dataset or a dict of lists, with a `length` column), in row order."""
    return forward(model, encoded, collate, device=device, tokens_per_batch=tokens_per_batch,
                   max_batch_size=max_batch_size, autocast_dtype=autocast_dtype)[0]


@torch.inference_mode()
def forward(
    model: torch.nn.Module,
    encoded: Dataset | dict[str, list],
    collate,
    *,
    device: torch.device | str = "cpu",
    tokens_per_batch: int = EVAL_TOKENS_PER_BATCH,
    max_batch_size: int = EVAL_MAX_BATCH_SIZE,
    autocast_dtype: torch.dtype | None = None,
    embeddings: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits, and with `embeddings` the mean of the last hidden states over real tokens (rows, hidden), from the
    same forward pass; in row order."""
    was_training = model.training
    model.eval()
    lengths = encoded["length"]
    batches = token_budget_batches(lengths, tokens_per_batch, max_batch_size, shuffle=False)
    names = encoded.column_names if isinstance(encoded, Dataset) else list(encoded)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in names]
    data = {c: encoded[c] for c in columns}  # plain lists: per-row Arrow access is slow
    results: list[np.ndarray | None] = [None] * len(lengths)
    pooled: list[np.ndarray | None] = [None] * len(lengths)
    device = torch.device(device)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        for indices in batches:
            batch = collate([{c: data[c][i] for c in columns} for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            output = model(**batch, output_hidden_states=embeddings)
            logits = output.logits.float().cpu().numpy()
            if embeddings:
                mask = batch["attention_mask"].unsqueeze(-1).float()  # (batch, tokens, 1)
                hidden = output.hidden_states[-1].float()  # (batch, tokens, hidden)
                means = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()  # (batch, hidden)
            for position, index in enumerate(indices):
                results[index] = logits[position]
                if embeddings:
                    pooled[index] = means[position]
    model.train(was_training)
    if not results:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32) if embeddings else None
    return np.stack(results), np.stack(pooled) if embeddings else None


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, list]:
    """Tokenized texts with a `length` column, ready for forward_logits; no Dataset round trip, so a single text
    costs only its tokenization and forward pass (what a served request pays)."""
    encoded = dict(tokenizer(texts, pairs, truncation=True, max_length=max_length))
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded
