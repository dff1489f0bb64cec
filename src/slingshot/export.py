"""Exporting a finished run's model in other forms, one function per kind (`slingshot export RUN --merge`).

A LoRA generation or seq2seq run keeps only its adapter (megabytes, where merged weights of a 7B model are ~14 GB in bf16);
merging folds the adapter into a copy of the base weights, W + (alpha / r) B A, so the result is a plain Hugging
Face folder that loads and generates without PEFT, as fast as the base model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slingshot.errors import RunDirError
from slingshot.rundir import find_run


def export_merged(run_path: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Merged full weights (safetensors), config and tokenizer of a LoRA run in `out` (default RUN/merged).

    Raises RunDirError when the run holds full weights already, or `out` exists (without overwrite).
    """
    import torch

    from slingshot.models import load_tokenizer
    from slingshot.tasks.generation import load_adapter_model

    run = find_run(run_path)
    if not (run.model / "adapter_config.json").is_file():
        raise RunDirError(f"nothing to merge: {run.model} already holds full weights (method full, or a "
                          "classification/QA run, whose LoRA is merged when saved)",
                          f"load {run.model} directly; it is a Hugging Face model folder")
    target = Path(out) if out is not None else run.path / "merged"
    if target.exists() and not overwrite:
        raise RunDirError(f"{target} already exists; it is not overwritten", "choose another --out, or add --overwrite")
    # A QLoRA adapter merges into the base loaded unquantized (fp32 here): merging into 4-bit weights would round
    # the adapter away. The merged copy is saved in the base checkpoint's own dtype.
    merged = load_adapter_model(run.model).merge_and_unload()
    saved_dtype = checkpoint_dtype(run.model)
    if saved_dtype is not None and saved_dtype != torch.float32:
        merged = merged.to(saved_dtype)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging), safe_serialization=True)
    load_tokenizer(run.model).save_pretrained(str(staging))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)  # written whole or not at all
    return target


def checkpoint_dtype(adapter_folder: Path):
    """The torch dtype the adapter's base checkpoint is stored in (config.json), or None when it does not say."""
    import torch
    from peft import PeftConfig
    from transformers import AutoConfig

    from slingshot.models import resolve_model

    base = resolve_model(PeftConfig.from_pretrained(str(adapter_folder)).base_model_name_or_path)
    dtype = getattr(AutoConfig.from_pretrained(str(base.path)), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None
