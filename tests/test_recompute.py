"""GELU, LayerNorm and attention-dropout outputs rebuilt in the backward pass: less kept, the same gradients."""

import pytest
import torch
import torch.nn.functional as F
from conftest import toy_recipe

from slingshot import recompute
from slingshot.dropout import fast_cpu_dropout
from slingshot.recipe import recipe_from_dict
from slingshot.train import train


def classifier(path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2, attn_implementation="eager")
    return model.train()


def counting_pack(use: bool, kept: dict):
    """slingshot.recompute's pack hook (or none), noting what stays in memory: {storage: (producer, bytes)}."""

    def pack(tensor):
        out = recompute._pack(tensor) if use else tensor
        for kept_tensor in out.inputs if isinstance(out, recompute._Recompute) else (out,):
            base = kept_tensor if kept_tensor._base is None else kept_tensor._base
            producer = type(base.grad_fn).__name__ if base.grad_fn is not None else "leaf"
            storage = kept_tensor.untyped_storage()
            kept[storage.data_ptr()] = (producer, storage.nbytes())
        return out

    return pack


def step(model, use: bool, dtype=None, seed: int = 5):
    """Gradients of one training step and what its forward pass kept: {storage: (producer, bytes)}."""
    kept = {}
    ids = torch.randint(5, 40, (6, 12), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    torch.manual_seed(seed)
    with fast_cpu_dropout(), recompute.recompute_cheap_activations(use), \
            torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None), \
            torch.autograd.graph.saved_tensors_hooks(counting_pack(use, kept), recompute._unpack):
        loss = F.cross_entropy(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float(), labels)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads, kept


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_gradients_are_bitwise_the_same(tiny_bert, dtype):
    model = classifier(tiny_bert)
    plain, _ = step(model, use=False, dtype=dtype)
    rebuilt, _ = step(model, use=True, dtype=dtype)
    assert plain.keys() == rebuilt.keys() and len(plain) > 10
    for name in plain:
        assert torch.equal(plain[name], rebuilt[name]), name


def test_gpt2_gradients_are_the_same(tiny_gpt2):
    model = classifier(tiny_gpt2)
    model.config.pad_token_id = model.config.eos_token_id
    plain, _ = step(model, use=False)
    rebuilt, _ = step(model, use=True)
    for name in plain:
        assert torch.equal(plain[name], rebuilt[name]), name


def test_gelu_layer_norm_and_attention_dropout_outputs_are_not_kept(tiny_bert):
    model = classifier(tiny_bert)
    config = model.config
    _, plain = step(model, use=False)
    _, rebuilt = step(model, use=True)
    producers = {producer for producer, _ in rebuilt.values()}
    assert "GeluBackward0" not in producers and not recompute._layer_norms
    assert "NativeLayerNormBackward0" in {producer for producer, _ in plain.values()}
    # The LayerNorm outputs linear layers keep: two a layer (attention block, feed-forward block), each [6, 12,
    # hidden] floats; the last one stays, whole, because the pooler keeps a slice of it (its first token).
    tokens, last = 6 * 12, 6 * 12 * config.hidden_size * 4
    layer_norm_kept = sum(size for producer, size in rebuilt.values() if producer == "NativeLayerNormBackward0")
    assert layer_norm_kept == last
    saved = sum(size for _, size in plain.values()) - sum(size for _, size in rebuilt.values())
    gelu = config.num_hidden_layers * tokens * config.intermediate_size * 4
    attention = config.num_hidden_layers * 6 * config.num_attention_heads * 12 * 12 * 4
    layer_norm = 2 * config.num_hidden_layers * tokens * config.hidden_size * 4 - last
    assert saved == gelu + attention + layer_norm


def test_other_layouts_are_kept_as_they_are():
    """A transposed or partial view of a GELU output is kept as it is; the whole tensor is rebuilt; same gradients."""
    torch.manual_seed(0)
    x = torch.randn(5, 7, requires_grad=True)
    cases = [(lambda y: y.t(), torch.randn(5, 3)), (lambda y: y[:, :4], torch.randn(4, 2)),
             (lambda y: y, torch.randn(7, 2))]
    for view, weight in cases:
        grads = []
        for use in (False, True):
            with recompute.recompute_cheap_activations(use):
                out = view(F.gelu(x)) @ weight
            out.square().sum().backward()
            grads.append(x.grad.clone())
            x.grad = None
        assert torch.equal(grads[0], grads[1])


def test_autocast_copies_are_rebuilt_in_the_dtype_the_forward_used():
    """Under bf16 autocast a linear layer keeps a bf16 copy of its input; LayerNorm of a bf16 input runs in fp32."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, 16, requires_grad=True)
    norm, linear = torch.nn.LayerNorm(16), torch.nn.Linear(16, 8)
    grads, kept_bytes = [], []
    for use in (False, True):
        kept = {}
        with recompute.recompute_cheap_activations(use), torch.autocast("cpu", dtype=torch.bfloat16), \
                torch.autograd.graph.saved_tensors_hooks(counting_pack(use, kept), recompute._unpack):
            y = linear(F.gelu(norm(x.to(torch.bfloat16)))).float()
        y.square().sum().backward()
        grads.append([t.grad.clone() for t in (x, norm.weight, linear.weight)])
        kept_bytes.append(sum(size for _, size in kept.values()))
        for t in (x, norm.weight, norm.bias, linear.weight, linear.bias):
            t.grad = None
    for plain, rebuilt in zip(*grads):
        assert torch.equal(plain, rebuilt)
    assert kept_bytes[1] < kept_bytes[0]


def test_layer_norm_is_restored_however_the_block_is_left():
    original = F.layer_norm
    with pytest.raises(RuntimeError, match="boom"):
        with recompute.recompute_cheap_activations():
            assert F.layer_norm is not original
            raise RuntimeError("boom")
    assert F.layer_norm is original
    with recompute.recompute_cheap_activations(enabled=False):
        assert F.layer_norm is original


def test_training_with_and_without_it_ends_with_the_same_weights(tmp_path, tiny_bert, toy_data):
    from safetensors.torch import load_file

    weights = []
    for name, use in (("on", True), ("off", False)):
        raw = toy_recipe(tmp_path / name, tiny_bert, toy_data, epochs=2, recompute_elementwise=use)
        result = train(recipe_from_dict(raw), show_progress=False)
        weights.append(load_file(str(result.run.model / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
