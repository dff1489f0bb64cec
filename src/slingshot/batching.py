"""Length-bucketed, token-budget batches: the padding killer.

Padding every text to a fixed length spends most of a CPU's time multiplying zeros (97% on SST-2 with the
pad-to-512 recipe). Here examples are shuffled, cut into large pools, sorted by length inside each pool, and
packed greedily while `batch_size x longest_length` stays under a token budget; the batches are then shuffled.
Batch size varies, tokens per batch stay near constant, and padding stays at a few percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def pack_sorted(order: Sequence[int], lengths: Sequence[int], tokens_per_batch: int, max_batch_size: int) -> list[list[int]]:
    """Greedily cut an ordering (already sorted by length) into batches under the token budget."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for index in order:
        length = lengths[index]
        grown = max(longest, length)
        if batch and ((len(batch) + 1) * grown > tokens_per_batch or len(batch) >= max_batch_size):
            batches.append(batch)
            batch, grown = [], length
        batch.append(int(index))
        longest = grown
    if batch:
        batches.append(batch)
    return batches


def token_budget_batches(
    lengths: Sequence[int],
    tokens_per_batch: int,
    max_batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    pool_size: int | None = None,
) -> list[list[int]]:
    """Indices grouped into batches whose padded size (count x longest) stays within `tokens_per_batch`.

    shuffle=False (evaluation): one global sort, longest first, so that a memory problem shows on the first batch.
    shuffle=True (training): a seeded shuffle, pools sorted by length, batches shuffled; same seed, same batches.
    """
    lengths = np.asarray(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return pack_sorted(order, lengths, tokens_per_batch, max_batch_size)
    rng = np.random.default_rng(seed)
    pool_size = pool_size or max(2048, 64 * max_batch_size)
    order = rng.permutation(len(lengths))
    batches: list[list[int]] = []
    for start in range(0, len(order), pool_size):
        pool = order[start : start + pool_size]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches += pack_sorted(pool, lengths, tokens_per_batch, max_batch_size)
    permutation = rng.permutation(len(batches))
    return [batches[i] for i in permutation]


# Smaller batches for a small training set stop here: fewer examples per optimizer step make the gradient too noisy.
MIN_EXAMPLES_PER_STEP = 8


def fit_token_budget(
    lengths: Sequence[int],
    tokens_per_batch: int,
    max_batch_size: int,
    *,
    min_steps: int | None,
    epochs: float,
    grad_accum: int = 1,
    processes: int = 1,
    seed: int = 0,
) -> int:
    """The token budget of training batches: `tokens_per_batch`, halved while the run would make fewer than
    `min_steps` optimizer steps and each step would still see MIN_EXAMPLES_PER_STEP examples on average.

    A budget of 1,024 tokens holds ~50 short texts, so 1,000 SST-2 sentences make 19 batches an epoch and 57 optimizer
    steps in 3 epochs: too few updates to fine-tune (78.8% dev accuracy against 81.1% with 256-token batches, mean
    of 3 seeds; bench/small_data.py). Halving the batch doubles the updates for the same tokens (smaller batches
    run somewhat slower per token on a CPU). Counted as the loop counts: batches of the first epoch, shared among
    `processes`, `grad_accum` of them per step.
    """
    def steps_and_examples(budget: int) -> tuple[int, float]:
        batches = len(token_budget_batches(lengths, budget, max_batch_size, shuffle=True, seed=seed))
        steps_per_epoch = math.ceil(math.ceil(batches / processes) / grad_accum)
        return max(1, math.ceil(steps_per_epoch * epochs)), len(lengths) / max(1, steps_per_epoch)

    budget = tokens_per_batch
    if not min_steps or not len(lengths):
        return budget
    steps, _ = steps_and_examples(budget)
    while steps < min_steps and budget > 1:
        smaller_steps, examples_per_step = steps_and_examples(budget // 2)
        if examples_per_step < MIN_EXAMPLES_PER_STEP:  # texts longer than the budget stop here too (one a batch)
            break
        budget, steps = budget // 2, smaller_steps
    return budget


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the padded tensor cells that are padding."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1.0 - real / padded if padded else 0.0


def token_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Real and padded tokens of a collated batch: the cells of its attention mask that are 1, and all of them; an
    encoder-decoder's targets (decoder_attention_mask) are tokens of their own and count too."""
    real = padded = 0
    for name in ("attention_mask", "decoder_attention_mask"):
        if name in batch:
            real += int(batch[name].sum())
            padded += int(batch[name].numel())
    return real, padded


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """A batch sampler over `token_budget_batches`; `set_epoch` reshuffles deterministically (seed + epoch)."""

    def __init__(self, lengths: Sequence[int], tokens_per_batch: int, max_batch_size: int, *, shuffle: bool, seed: int = 0):
        self.lengths = list(lengths)
        self.tokens_per_batch = tokens_per_batch
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._batches = self._make()

    def _make(self) -> list[list[int]]:
        return token_budget_batches(
            self.lengths, self.tokens_per_batch, self.max_batch_size, shuffle=self.shuffle, seed=self.seed + self.epoch
        )

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._batches = self._make()

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def batches(self) -> list[list[int]]:
        return self._batches


class PaddingCollator:
    """Pads token-id lists to the longest in the batch (right side) and stacks labels.

    Written by hand rather than `DataCollatorWithPadding` because it is on the hot path and needs no tokenizer call.
    """

    def __init__(self, pad_token_id: int, label_dtype: torch.dtype = torch.long):
        self.pad_token_id = pad_token_id
        self.label_dtype = label_dtype

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        batch: dict[str, torch.Tensor] = {}
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        has_types = "token_type_ids" in examples[0]
        token_type_ids = torch.zeros((len(examples), longest), dtype=torch.long) if has_types else None
        for row, example in enumerate(examples):
            ids = example["input_ids"]
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            attention_mask[row, : len(ids)] = 1
            if token_type_ids is not None:
                token_type_ids[row, : len(ids)] = torch.as_tensor(example["token_type_ids"])
        batch["input_ids"] = input_ids
        batch["attention_mask"] = attention_mask
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=self.label_dtype)
        if "weights" in examples[0]:
            batch["weights"] = torch.tensor([e["weights"] for e in examples], dtype=torch.float32)
        if "teacher" in examples[0]:  # distillation targets: per example, or per token (padded with 0)
            batch["teacher"] = pad_targets([e["teacher"] for e in examples], longest)
        return batch


def pad_targets(targets: list, longest: int) -> torch.Tensor:
    """Teacher targets as one tensor: (batch,) values, (batch, k) probabilities, or per token (batch, longest, k)
    with zeros where a row is padding (a probability 0 adds nothing to the distillation loss)."""
    first = targets[0]
    if not isinstance(first, list) or not first or not isinstance(first[0], list):
        return torch.tensor(targets, dtype=torch.float32)
    padded = torch.zeros((len(targets), longest, len(first[0])), dtype=torch.float32)
    for row, target in enumerate(targets):
        padded[row, : len(target)] = torch.tensor(target, dtype=torch.float32)
    return padded
