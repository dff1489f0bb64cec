import numpy as np
import torch

from slingshot.batching import (
    PaddingCollator,
    TokenBudgetBatchSampler,
    fit_token_budget,
    padding_fraction,
    token_budget_batches,
)


def lengths(n=2000, seed=0):
    return np.random.default_rng(seed).integers(3, 120, n).tolist()


def test_every_index_appears_exactly_once():
    ls = lengths()
    batches = token_budget_batches(ls, 1024, 64, shuffle=True, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(ls)))


def test_batches_stay_within_the_token_budget_and_size_cap():
    ls = lengths()
    for batch in token_budget_batches(ls, 1024, 64, shuffle=True, seed=1):
        assert len(batch) <= 64
        assert len(batch) * max(ls[i] for i in batch) <= 1024


def test_an_example_longer_than_the_budget_gets_a_batch_of_its_own():
    batches = token_budget_batches([5, 500, 5], 100, 8, shuffle=False)
    assert [1] in batches


def test_padding_is_a_few_percent_where_random_batches_waste_half():
    ls = lengths(5000)
    bucketed = token_budget_batches(ls, 2048, 128, shuffle=True, seed=0)
    random_order = np.random.default_rng(0).permutation(len(ls)).tolist()
    random_batches = [random_order[i:i + 32] for i in range(0, len(ls), 32)]
    assert padding_fraction(bucketed, ls) < 0.03
    assert padding_fraction(random_batches, ls) > 0.3


def test_same_seed_same_batches_other_epoch_other_order():
    ls = lengths()
    sampler = TokenBudgetBatchSampler(ls, 1024, 64, shuffle=True, seed=3)
    first = list(sampler)
    assert list(TokenBudgetBatchSampler(ls, 1024, 64, shuffle=True, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_evaluation_batches_are_sorted_longest_first():
    ls = [3, 50, 10, 40]
    batches = token_budget_batches(ls, 60, 8, shuffle=False)
    assert batches[0] == [1]
    assert [i for b in batches for i in b] == [1, 3, 2, 0]


def test_collator_pads_right_and_masks_padding():
    batch = PaddingCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "labels": 1},
        {"input_ids": [8], "labels": 0},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].dtype == torch.long


def test_a_small_training_set_gets_smaller_batches_until_the_run_has_enough_steps():
    short = [20] * 1000  # 51 texts fill 1,024 tokens, 25 fill 512, 12 fill 256
    fit = {"max_batch_size": 64, "epochs": 3, "seed": 0}
    # 1,024: 20 batches x 3 = 60 steps; 512: 40 x 3 = 120; 256: 84 x 3 = 252 >= 200
    assert fit_token_budget(short, 1024, min_steps=200, **fit) == 256
    assert fit_token_budget(short, 1024, min_steps=100, **fit) == 512
    assert fit_token_budget(short, 1024, min_steps=60, **fit) == 1024
    assert fit_token_budget(short, 1024, min_steps=None, **fit) == 1024
    # two batches a step (accumulated, or one on each of two processes): 128 tokens, 6 texts a batch, 12 a step
    assert fit_token_budget(short, 1024, min_steps=200, grad_accum=2, **fit) == 128
    assert fit_token_budget(short, 1024, min_steps=200, processes=2, **fit) == 128
    # max_batch_size caps 8-token texts at 64 a batch: 512 changes nothing, 256 gives 32, 128 16 (189 steps),
    # 64 gives 8 a batch and 375 steps
    assert fit_token_budget([8] * 1000, 1024, max_batch_size=64, min_steps=200, epochs=3) == 64
    # a large training set keeps the budget as it is
    assert fit_token_budget([20] * 20_000, 1024, min_steps=200, **fit) == 1024


def test_batches_stop_shrinking_before_a_step_sees_fewer_than_8_examples():
    tiny = [20] * 100
    # 256 tokens: 12 texts a batch, 27 steps; 128 would give 6 a batch: too few, though still short of 200 steps
    assert fit_token_budget(tiny, 1024, max_batch_size=64, min_steps=200, epochs=3) == 256
    # long texts: every budget gives one text a batch, so halving adds nothing
    assert fit_token_budget([900] * 50, 1024, max_batch_size=64, min_steps=200, epochs=3) == 1024
    assert fit_token_budget([], 1024, max_batch_size=64, min_steps=200, epochs=3) == 1024
