"""The model catalogue (catalogue.yaml, facts with sources) and the shape of any model a plan is asked about.

A plan needs a model's shape (parameters, layers, widths, vocabulary) before any weight is loaded. It comes from the
model's own config.json when the model is on disk (exact: the model is built on PyTorch's meta device, which
allocates nothing), else from the catalogue.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from slingshot.errors import ModelError

KINDS = ("encoder", "decoder", "seq2seq")
CONFIG_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class ModelSpec:
    """A model's shape and, for catalogue entries, its facts. Counts are parameters; context in tokens."""

    id: str
    kind: str  # encoder, decoder or seq2seq
    family: str  # transformers' model_type
    parameters: int
    embedding_parameters: int  # input token and position tables: no matmul work per token
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    context_length: int
    kv_heads: int | None = None  # grouped-query attention; None = heads
    head_dim: int | None = None  # None = hidden / heads
    gated_mlp: bool = False  # SwiGLU/GeGLU: three MLP matrices instead of two
    tied_embeddings: bool = True
    weights_dtype: str = "fp32"  # the checkpoint's dtype, which transformers 5 loads (and train.py trains) in
    license: str | None = None
    languages: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    benchmarks: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None  # model card URL, or the config.json read

    @property
    def non_embedding_parameters(self) -> int:
        return self.parameters - self.embedding_parameters

    @property
    def query_width(self) -> int:
        """Width of the attention queries (heads x head size); equals `hidden` except in models like Gemma 2."""
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def key_value_width(self) -> int:
        return (self.kv_heads or self.heads) * (self.head_dim or self.hidden // self.heads)

    @property
    def output_matrix_parameters(self) -> int:
        """An untied language-model output matrix: dropped when the model gets a classification head instead."""
        return 0 if self.tied_embeddings or self.kind == "encoder" else self.vocab * self.hidden

    def linear_parameters_per_layer(self) -> int:
        """Weights of one block's matmuls (attention projections and MLP), the ones LoRA adapts or 4-bit stores."""
        attention = self.hidden * (2 * self.query_width + 2 * self.key_value_width)
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return attention + mlp

    def short(self) -> str:
        return self.id.split("/")[-1]


def architecture_parameters(spec: ModelSpec) -> int:
    """Parameters implied by the shape alone (matrices only, no biases or norms): the catalogue's sanity check.

    Seq2seq decoder blocks carry a cross-attention as well, counted here as a second attention block.
    """
    per_layer = spec.linear_parameters_per_layer()
    if spec.kind == "seq2seq":  # half the layers are decoder blocks, each with one more attention
        per_layer += spec.hidden * (2 * spec.query_width + 2 * spec.key_value_width) // 2
    output = 0 if spec.tied_embeddings else spec.vocab * spec.hidden
    return spec.layers * per_layer + spec.vocab * spec.hidden + output


@functools.lru_cache(maxsize=1)
def load_catalogue() -> tuple[ModelSpec, ...]:
    """Every catalogue entry, in file order (smallest to largest within each kind)."""
    text = resources.files("slingshot.plan").joinpath("catalogue.yaml").read_text(encoding="utf-8")
    known = {f.name for f in fields(ModelSpec)}
    specs = []
    for entry in yaml.safe_load(text)["models"]:
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"catalogue entry {entry.get('id')}: unknown fields {sorted(unknown)}")
        specs.append(ModelSpec(**entry))
    return tuple(specs)


def find_in_catalogue(name: str) -> ModelSpec | None:
    """The entry whose id, or id without its organisation, matches `name` (case-insensitive)."""
    wanted = name.strip().lower()
    for spec in load_catalogue():
        if wanted in (spec.id.lower(), spec.short().lower()):
            return spec
    return None


def model_spec(name: str, revision: str | None = None) -> ModelSpec:
    """The shape of the recipe's model without loading weights: its config.json on disk, else the catalogue.

    Raises ModelError when neither has it (a plan cannot guess a model's size).
    """
    config_path = _local_config(name, revision)
    if config_path is not None:
        return spec_from_config(config_path, name)
    spec = find_in_catalogue(name)
    if spec is not None:
        return spec
    raise ModelError(
        f"cannot plan for model '{name}': no config.json on disk and not in the catalogue",
        "download it once (`hf download " + name + " config.json`), give a local folder, or pick a catalogue "
        "model (`slingshot models` lists them)",
    )


def _local_config(name: str, revision: str | None) -> Path | None:
    """config.json from a local folder, the Hugging Face cache or a package that ships the weights; no network."""
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path / "config.json"
    if path.exists() or name.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    from slingshot.models import PACKAGED_MODELS, SHORT_NAMES

    hub_id = SHORT_NAMES.get(name.lower(), name)
    try:
        cached = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    except ValueError:  # an id the hub's validation rejects (HFValidationError): not cached
        cached = None
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if hub_id in PACKAGED_MODELS:
        import importlib

        module_name, folder, _ = PACKAGED_MODELS[hub_id]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return None
        packaged = Path(module.__file__).resolve().parent / folder / "config.json"  # type: ignore[arg-type]
        return packaged if packaged.is_file() else None
    return None


def spec_from_config(config_path: Path, name: str) -> ModelSpec:
    """Exact parameter counts from a config.json: the model is built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    raw = json.loads(config_path.read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(str(config_path.parent))
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    architectures = " ".join(raw.get("architectures") or [])
    is_decoder = not is_seq2seq and ("CausalLM" in architectures or "LMHead" in architectures
                                     or config.model_type in {"gpt2", "llama", "qwen2", "mistral", "gemma2", "phi3"})
    with torch.device("meta"):
        if is_seq2seq:
            from transformers import AutoModelForSeq2SeqLM

            model = AutoModelForSeq2SeqLM.from_config(config)
        elif is_decoder:
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = AutoModel.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    tables = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    hidden = _first(config, "hidden_size", "d_model", "n_embd", "dim")
    heads = _first(config, "num_attention_heads", "num_heads", "n_head", "n_heads")
    layers = _first(config, "num_hidden_layers", "num_layers", "n_layer", "n_layers")
    if is_seq2seq:
        layers += getattr(config, "num_decoder_layers", None) or layers
    intermediate = _first(config, "intermediate_size", "d_ff", "n_inner", "hidden_dim", default=0) or 4 * hidden
    activation = str(getattr(config, "hidden_act", "") or getattr(config, "feed_forward_proj", ""))
    return ModelSpec(
        id=name, kind="seq2seq" if is_seq2seq else "decoder" if is_decoder else "encoder",
        family=config.model_type, parameters=parameters, embedding_parameters=sum(tables.values()),
        layers=layers, hidden=hidden, heads=heads, intermediate=intermediate,
        vocab=_first(config, "vocab_size"),
        context_length=_first(config, "max_position_embeddings", "n_positions", "max_seq_len", default=512),
        kv_heads=getattr(config, "num_key_value_heads", None), head_dim=getattr(config, "head_dim", None),
        gated_mlp=config.model_type in {"llama", "qwen2", "mistral", "gemma2", "phi3", "modernbert"}
        or activation.startswith("gated"),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        weights_dtype=CONFIG_DTYPES.get(str(raw.get("torch_dtype") or raw.get("dtype") or "float32"), "fp32"),
        source=str(config_path),
    )


def _first(config, *names: str, default: int | None = None) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    if default is None:
        raise ModelError(f"config of {getattr(config, 'name_or_path', 'the model')} has none of {', '.join(names)}")
    return default
