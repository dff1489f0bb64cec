"""Keep three cheap activations out of memory while training: the backward pass recomputes them.

What a fine-tuning step of a small encoder holds at its peak is mostly what the forward pass keeps for the
backward pass. Three of those tensors are cheap to rebuild from tensors that are kept anyway:

- GELU's output, which the next linear layer keeps as its input: GELU keeps its own input for its backward, so
  the output is recomputed from it (in all-MiniLM-L6-v2, 1,536 floats a token in each of 6 layers: 38 MB of a
  1,024-token fp32 batch).
- Dropout's output where attention's second matmul keeps it: softmax keeps its output and dropout its bool mask
  for their own backward passes, so the dropped weights are recomputed from the two (4 bytes an attention score:
  19 MB of a 16 x 64-token fp32 batch).
- LayerNorm's output, which the next layer's query, key and value projections (or the feed-forward block) keep as
  their input: LayerNorm keeps its input for its backward, so the output is recomputed from it (2 x 384 floats a
  token a layer: 19 MB of a 1,024-token fp32 batch).

Mechanism: `torch.autograd.graph.saved_tensors_hooks`. When an operation saves a tensor (or a view of one) that a
GELU, a LayerNorm or a `slingshot.dropout` after a softmax produced, or autocast's copy of such a tensor in
another dtype, the hook stores the recipe instead: the producer's input (and, for dropout, its mask), which the
producer's own node keeps anyway. The backward pass reruns the very kernel the forward ran, under the forward's
autocast state, so gradients are bitwise the same. LayerNorm's epsilon is not in its node, so
`torch.nn.functional.layer_norm` (which `nn.LayerNorm` calls) is wrapped while inside to note it. Anything else
is stored as it is: views are rebuilt only when the saved tensor and its base are contiguous with the same
elements (a linear layer on 3-D input, a batched matmul); other layouts and PyTorch's own dropout (GPUs) are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

_torch_layer_norm = F.layer_norm
# LayerNorm nodes made inside the block -> (input, weight, bias), (normalized_shape, eps); emptied on leaving it
_layer_norms: dict[Any, tuple[tuple, tuple]] = {}


class _Recompute:
    """What to run in the backward pass to get a saved tensor back."""

    __slots__ = ("kind", "inputs", "extra", "dtype", "shape", "autocast")

    def __init__(self, kind: str, inputs: tuple, extra: Any, dtype: torch.dtype | None, shape: torch.Size):
        self.kind, self.inputs, self.extra, self.dtype, self.shape = kind, inputs, extra, dtype, shape
        device = inputs[0].device.type
        # the forward's autocast state, so that the rebuilt op runs in the dtype the forward ran it in
        try:
            self.autocast = torch.autocast(device, dtype=torch.get_autocast_dtype(device),
                                           enabled=torch.is_autocast_enabled(device))
        except (RuntimeError, ValueError):  # a device type autocast does not know: it did not run there either
            self.autocast = contextlib.nullcontext()

    def run(self) -> torch.Tensor:
        with torch.no_grad(), self.autocast:
            if self.kind == "gelu":
                (source,) = self.inputs
                out = F.gelu(source, approximate=self.extra)
            elif self.kind == "layer_norm":
                source, weight, bias = self.inputs
                out = _torch_layer_norm(source, self.extra[0], weight, bias, self.extra[1])
            else:  # dropout: the op slingshot.dropout's forward runs, on the same input and mask
                source, keep = self.inputs
                out = torch.ops.aten.native_dropout_backward(source, keep, self.extra)
            if self.dtype is not None:  # what autocast kept was a copy in another dtype
                out = out.to(self.dtype)
        return out.view(self.shape)


def _producer(tensor: torch.Tensor) -> tuple[torch.Tensor, Any] | None:
    """The tensor whose data `tensor` holds, and the node that produced it, when `tensor` is that tensor or a
    contiguous view of all of it (the only layouts rebuilt)."""
    base = tensor if tensor._base is None else tensor._base
    if base is not tensor and (tensor.numel() != base.numel() or tensor.storage_offset() != base.storage_offset()
                               or not tensor.is_contiguous()):
        return None
    if not base.is_contiguous() or base.grad_fn is None:
        return None
    return base, base.grad_fn


def _pack(tensor: torch.Tensor) -> torch.Tensor | _Recompute:
    found = _producer(tensor)
    if found is None:
        return tensor
    base, node = found
    dtype = None
    if type(node).__name__ == "ToCopyBackward0":  # autocast's copy of the output in the compute dtype
        dtype, node = base.dtype, node.next_functions[0][0]
        if node is None:
            return tensor
    kind, inputs, extra = _source(node)
    if kind is None or not inputs[0].is_contiguous() or inputs[0].shape != base.shape:
        return tensor
    if dtype is None and inputs[0].dtype != base.dtype:
        return tensor
    return _Recompute(kind, inputs, extra, dtype, tensor.shape)


def _source(node: Any) -> tuple[str | None, tuple, Any]:
    """How to rebuild the output of `node`: (kind, the tensors it came from, other arguments), or (None, (), None)."""
    note = _layer_norms.get(node)
    if note is not None:
        return "layer_norm", note[0], note[1]
    name = type(node).__name__
    if name == "GeluBackward0":
        return "gelu", (node._saved_self,), node._saved_approximate
    if name == "_KeepAndScaleBackward":  # slingshot.dropout, after a softmax (which keeps its output)
        parent = node.next_functions[0][0]
        if parent is not None and type(parent).__name__ == "SoftmaxBackward0":
            (keep,) = node.saved_tensors
            return "dropout", (parent._saved_result, keep), node.scale
    return None, (), None


def _noted_layer_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    out = _torch_layer_norm(input, normalized_shape, weight, bias, eps)
    if out.grad_fn is not None and input.is_contiguous() and out.shape == input.shape:
        # keyed by the node: autocast's copies of `out` point to it, not to `out`
        _layer_norms[out.grad_fn] = ((input, weight, bias), (tuple(normalized_shape), eps))
    return out


def _unpack(saved: torch.Tensor | _Recompute) -> torch.Tensor:
    return saved.run() if isinstance(saved, _Recompute) else saved


@contextlib.contextmanager
def recompute_cheap_activations(enabled: bool = True) -> Iterator[None]:
    """While inside, the forward pass keeps GELU, LayerNorm and attention-dropout outputs as recipes (see the
    module); `torch.nn.functional.layer_norm` is restored on exit, however it is left."""
    if not enabled or F.layer_norm is _noted_layer_norm:
        yield
        return
    F.layer_norm = _noted_layer_norm
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        F.layer_norm = _torch_layer_norm
        _layer_norms.clear()  # the notes hold the nodes: only the forward pass needs them
