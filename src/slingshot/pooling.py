"""Classify the mean of the token vectors with a model that `transformers.pipeline` loads as it is.

Sentence-transformers models (all-MiniLM-L6-v2 among them) were trained on the mean of their last hidden states,
while `BertForSequenceClassification` (and RoBERTa's, ELECTRA's...) classifies the first token, [CLS], whose
vector those models never had to make useful. Transformers has no option for another pooling, and a custom head
would need `trust_remote_code` from everyone who loads the model. So the mean is put where the head looks: one
more encoder layer of the model's own class is appended, with weights chosen so that its output at position 0 is
LayerNorm(masked mean of the previous layer's outputs):

- query and key projections are zero, so every attention score is 0 and each position attends uniformly to the
  real (unmasked) tokens; the value projection is `scale` x identity and the attention output projection the
  identity, so position 0 receives `scale` x the masked mean;
- the residual adds the position's own vector, which the following LayerNorm (weight 1, bias 0) makes negligible
  because LayerNorm ignores scale: LayerNorm(x_0 + 1000 m) = LayerNorm(m + x_0 / 1000);
- the feed-forward block is zero, so the second residual and LayerNorm pass the normalised mean through.

The model stays a standard checkpoint (`num_hidden_layers` is one more), so pipeline, ONNX export and `serve` run
it unchanged. The layer is frozen: it is an operator, not something to learn (the head's dense layer after it can
absorb any affine map its LayerNorms could learn), and its 1.8M weights (all-MiniLM-L6-v2) would otherwise take
gradients and AdamW moments. While training, Slingshot runs the layer for position 0 alone
(`_forward_at_first_token`: the same function, and the same per-head attention dropout, for one position instead
of every token), so training costs about what [CLS] pooling costs. A loaded model runs the whole layer: 1/6 more
inference compute for a 6-layer model, since its feed-forward matmuls run on zeros for every token.
"""

from __future__ import annotations

import inspect
import json
import types
from pathlib import Path

import torch

from .errors import RecipeError

MEAN_SCALE = 1000.0


def sentence_transformers_pooling(model_dir: Path | str) -> str | None:
    """The pooling a sentence-transformers folder was trained with ('mean', 'cls', 'max', ...), or None."""
    config = Path(model_dir) / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    try:
        modes = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for mode in ("mean", "cls", "max", "mean_sqrt_len", "weightedmean", "lasttoken"):
        key = "pooling_mode_cls_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"
        if modes.get(key):
            return mode
    return None


def _encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        return None
    last = layers[-1]
    for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
        try:
            last.get_submodule(name)
        except AttributeError:
            return None
    return layers


def resolve_pooling(recipe, model_dir: Path | str, model: torch.nn.Module) -> str:
    """model.pooling resolved for this model: 'mean' or 'cls' (auto: mean for a mean-pooled sentence-transformers
    folder of a BERT-style encoder trained with method full)."""
    choice = recipe.model.pooling
    if choice != "auto":
        return choice
    if (recipe.task in ("classification", "regression") and recipe.train.method == "full"
            and sentence_transformers_pooling(model_dir) == "mean" and supports_mean_pooling(model)):
        return "mean"
    return "cls"


def supports_mean_pooling(model: torch.nn.Module) -> bool:
    """True for BERT-style encoders (BERT, RoBERTa, XLM-R, ELECTRA...), whose layers the construction fits."""
    return _encoder_layers(model) is not None


def append_mean_pooling_layer(model: torch.nn.Module, scale: float = MEAN_SCALE) -> torch.nn.Module:
    """Append one encoder layer whose output at position 0 is LayerNorm(masked mean); see the module docstring."""
    layers = _encoder_layers(model)
    if layers is None:
        raise RecipeError(
            f"model.pooling mean needs a BERT-style encoder (BERT, RoBERTa, XLM-R, ELECTRA); "
            f"{type(model).__name__} has another layout",
            "set model.pooling: cls",
        )
    config = model.config
    last = layers[-1]
    kwargs = {"layer_idx": len(layers)} if "layer_idx" in inspect.signature(type(last).__init__).parameters else {}
    layer = type(last)(config, **kwargs)
    eye = torch.eye(config.hidden_size)
    with torch.no_grad():
        attention = layer.attention.self
        for linear in (attention.query, attention.key):
            linear.weight.zero_()
            linear.bias.zero_()
        attention.value.weight.copy_(eye * scale)
        attention.value.bias.zero_()
        output = layer.attention.output
        output.dense.weight.copy_(eye)
        output.dense.bias.zero_()
        for linear in (layer.intermediate.dense, layer.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
        for norm in (output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    layer.forward = types.MethodType(_forward_at_first_token, layer)
    reference = next(last.parameters())
    layer.to(device=reference.device, dtype=reference.dtype)
    layer.train(last.training)
    layer.requires_grad_(False)
    layers.append(layer)
    config.num_hidden_layers = len(layers)
    return model


def _forward_at_first_token(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            *args, **kwargs) -> torch.Tensor:
    """The appended layer's forward in this process: what the saved layer computes at position 0, computed for
    position 0 alone (the head reads nothing else). Position 0's attention weights are uniform over the real
    tokens, so its context is each head's masked mean of the values, dropped out per head as attention dropout
    drops them; then the layer's own output projection, residual, LayerNorms and feed-forward block run on one
    vector a text instead of one a token. The other positions pass through unchanged."""
    batch, length = hidden_states.shape[:2]
    attention = self.attention.self
    values = attention.value(hidden_states)
    values = values.view(batch, length, attention.num_attention_heads, -1)
    keep = _real_tokens(attention_mask, batch, length).to(values.device, values.dtype)
    weights = (keep / keep.sum(dim=1, keepdim=True).clamp(min=1)).unsqueeze(1)
    weights = weights.expand(batch, attention.num_attention_heads, length)
    weights = torch.nn.functional.dropout(weights, p=attention.dropout.p, training=self.training)
    context = torch.einsum("bhl,blhd->bhd", weights, values).reshape(batch, 1, -1)
    first = self.attention.output(context, hidden_states[:, :1])
    first = self.output(self.intermediate(first), first)
    return torch.cat([first, hidden_states[:, 1:]], dim=1)


def _real_tokens(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """[batch, length] booleans, True where a key may be attended to, from the mask the encoder hands its layers:
    None (no padding), 2-D 0/1 (flash attention), or 4-D boolean (SDPA) or additive (eager, 0 or the dtype's
    minimum). Every query row of a bidirectional mask masks the same keys; row 0 is the [CLS] query."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool)
    if attention_mask.dim() == 2:  # 1 for a real token, 0 for padding
        return (attention_mask > 0).expand(batch, length)
    row = attention_mask[:, 0, 0, :]
    if row.dtype != torch.bool:  # additive: 0 where attended, the dtype's minimum where masked
        row = row > torch.finfo(row.dtype).min / 2
    return row.expand(batch, length)
