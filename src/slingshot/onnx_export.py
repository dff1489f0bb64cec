"""`slingshot export RUN --onnx [--int8]`: an ONNX copy of a classification model for ONNX Runtime, optionally
with dynamic int8 weights, and a check of its agreement with PyTorch on the run's eval set written into the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slingshot.errors import RunDirError, SlingshotError
from slingshot.predictor import Predictor, onnx_path
from slingshot.rundir import write_json

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _LogitsOnly(torch.nn.Module):
    """The exported graph takes token tensors and returns logits only (no ModelOutput dict)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def export_onnx(run_path: str, int8: bool = False, overwrite: bool = False, check_limit: int | None = None) -> dict:
    """Write <run>/onnx/model.onnx (and model-int8.onnx) and <run>/onnx/check.json; returns the check.

    Raises:
        SlingshotError: onnxruntime/onnx missing (the `onnx` extra), or a task without an ONNX path.
        RunDirError: an export already exists and overwrite is not set.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise SlingshotError(f"ONNX export needs the onnx and onnxruntime packages ({error.name} is missing)",
                             'pip install "slingshot-lm[onnx]"') from error
    from slingshot.evaluate import load_run

    loaded = load_run(run_path)
    if loaded.task.name not in ("classification", "regression"):
        raise SlingshotError(f"ONNX export covers classification and regression runs; {run_path} is "
                             f"{loaded.task.name}", "serve it with the torch backend")
    fp32_path = onnx_path(loaded.run.path)
    target = onnx_path(loaded.run.path, int8)
    if target.exists() and not overwrite:
        raise RunDirError(f"{target} already exists", "pass --overwrite to export again")
    fp32_path.parent.mkdir(exist_ok=True)

    start = time.perf_counter()
    if not fp32_path.exists() or overwrite:
        sample = loaded.tokenizer(["a first example", "and a second, longer example text"], padding=True,
                                  return_tensors="pt")
        names = tuple(name for name in INPUT_NAMES if name in sample)
        axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
        temporary = fp32_path.with_suffix(".partial")
        with torch.inference_mode():
            # The TorchScript exporter: the dynamo one needs onnxscript, and this graph is static apart from its axes.
            torch.onnx.export(_LogitsOnly(loaded.model, names), tuple(sample[name] for name in names),
                              str(temporary), input_names=list(names), output_names=["logits"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        temporary.replace(fp32_path)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        temporary = target.with_suffix(".partial")
        # int8 weights, activations quantised on the fly: the usual CPU recipe for BERT-style encoders
        quantize_dynamic(str(fp32_path), str(temporary), weight_type=QuantType.QInt8)
        temporary.replace(target)
    export_s = time.perf_counter() - start

    check = agreement_check(loaded, int8, check_limit)
    check.update({"onnx_file": str(target), "size_mb": round(target.stat().st_size / 2**20, 1),
                  "export_s": round(export_s, 1)})
    write_json(target.parent / f"check{'-int8' if int8 else ''}.json", check)
    return check


def agreement_check(loaded, int8: bool, limit: int | None) -> dict[str, Any]:
    """Labels of the ONNX model against PyTorch's on the run's eval set, and the largest probability gap."""
    from slingshot.data import load_data

    data = load_data(loaded.recipe, strict=False, splits=("train", "eval"))
    split = data.splits["eval"]
    texts = list(split["text"])[:limit]
    pairs = list(split["text_pair"])[:limit] if "text_pair" in split.column_names else None
    torch_side = Predictor(loaded, "torch").predict(texts, pairs)
    onnx_side = Predictor(loaded, "onnx", int8=int8).predict(texts, pairs)
    if loaded.label_names is None:
        gaps = [abs(a["score"] - b["score"]) for a, b in zip(torch_side, onnx_side)]
        return {"examples": len(texts), "max_score_difference": float(max(gaps, default=0.0))}
    agree = [a["label"] == b["label"] for a, b in zip(torch_side, onnx_side)]
    gaps = [max(abs(a["probabilities"][name] - b["probabilities"][name]) for name in loaded.label_names)
            for a, b in zip(torch_side, onnx_side)]
    return {"examples": len(texts), "label_agreement": float(np.mean(agree)) if agree else 1.0,
            "disagreements": int(len(agree) - sum(agree)), "max_probability_difference": float(max(gaps, default=0.0))}


def read_check(run_path: Path, int8: bool) -> dict | None:
    path = onnx_path(run_path, int8).parent / f"check{'-int8' if int8 else ''}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
