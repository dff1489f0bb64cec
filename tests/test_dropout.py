"""The CPU dropout the training loop uses: PyTorch's distribution and scaling, a bool mask, the default generator."""

import pytest
import torch
import torch.nn.functional as F

from slingshot.dropout import dropout, fast_cpu_dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_p_in_every_16_bit_lane(p):
    torch.manual_seed(0)
    mask = keep_mask((400, 1000), p)
    assert mask.dtype == torch.bool and mask.shape == (400, 1000)
    # 400,000 draws: the standard error of the share is below 0.0008
    assert abs(mask.float().mean().item() - (1 - p)) < 0.004
    # each 64-bit draw gives four consecutive values; a lane that missed the sign bit would keep far more or less
    lanes = mask.flatten().view(-1, 4).float().mean(dim=0)
    assert torch.allclose(lanes, torch.full((4,), 1 - p), atol=0.006), lanes


def test_keep_mask_follows_the_seed_and_odd_sizes():
    torch.manual_seed(3)
    first = keep_mask((7, 13), 0.3)
    torch.manual_seed(3)
    again = keep_mask((7, 13), 0.3)
    later = keep_mask((7, 13), 0.3)
    assert torch.equal(first, again)
    assert not torch.equal(again, later)  # 91 values: equal by chance with probability ~1e-25


def test_dropout_zeroes_and_scales_and_its_gradient_is_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 48, requires_grad=True)
    y = dropout(x, p=0.25, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x.detach()[kept] / 0.75)
    assert 0.6 < kept.float().mean().item() < 0.9
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)


def test_dropout_matches_torch_in_expectation():
    torch.manual_seed(2)
    x = torch.ones(200_000)
    assert dropout(x, 0.1, True).mean().item() == pytest.approx(1.0, abs=0.01)
    assert F.dropout(x, 0.1, True).mean().item() == pytest.approx(1.0, abs=0.01)


def test_dropout_leaves_eval_inplace_and_edge_cases_to_torch():
    x = torch.randn(8, 8)
    assert torch.equal(dropout(x, 0.5, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    y = x.clone()
    out = dropout(y, 0.5, training=True, inplace=True)
    assert out.data_ptr() == y.data_ptr()
    assert dropout(torch.empty(0, 4), 0.5, True).shape == (0, 4)


def test_dropout_keeps_bf16():
    x = torch.randn(32, 32, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.2, True)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_fast_cpu_dropout_patches_modules_and_transformers_then_restores():
    original = F.dropout
    layer = torch.nn.Dropout(0.5).train()
    calls = []
    with fast_cpu_dropout():
        assert F.dropout is dropout
        assert torch.nn.functional.dropout is dropout  # what transformers' eager attention calls
        with fast_cpu_dropout():  # nested: still on, and the inner exit does not restore early
            pass
        assert F.dropout is dropout
        torch.manual_seed(4)
        calls.append(layer(torch.ones(1000)))
    assert F.dropout is original
    with pytest.raises(RuntimeError), fast_cpu_dropout():
        raise RuntimeError("a failing step")
    assert F.dropout is original
    with fast_cpu_dropout(enabled=False):
        assert F.dropout is original
    torch.manual_seed(4)
    assert torch.equal(calls[0], dropout(torch.ones(1000), 0.5, True))  # nn.Dropout went through it
