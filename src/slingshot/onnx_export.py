"""`slingshot export RUN --onnx [--int8]`: an ONNX copy of a classification, regression or extractive-QA model for
ONNX Runtime, optionally with dynamic int8 weights, and a check of its agreement with PyTorch on the run's eval set
written into the run. Generation runs are refused: their token-by-token decoding has no ONNX path here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slingshot.errors import RunDirError, SlingshotError
from slingshot.predictor import Predictor, QAPredictor, onnx_path
from slingshot.rundir import find_run, write_json

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# What each exportable task's graph returns: the fields of the Transformers model output, per example or per token
OUTPUTS = {"classification": ("logits",), "regression": ("logits",),
           "extractive_qa": ("start_logits", "end_logits")}


class _TensorsOnly(torch.nn.Module):
    """The exported graph takes token tensors and returns the named output tensors (no ModelOutput dict)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = names
        self.outputs = outputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(**dict(zip(self.names, tensors)))
        return tuple(getattr(output, name) for name in self.outputs)


def export_onnx(run_path: str, int8: bool = False, overwrite: bool = False, check_limit: int | None = None) -> dict:
    """Write <run>/onnx/model.onnx (and model-int8.onnx) and <run>/onnx/check.json; returns the check.

    Raises:
        SlingshotError: a generation run (no ONNX path), or onnxruntime/onnx missing (the `onnx` extra).
        RunDirError: an export already exists and overwrite is not set.
    """
    from slingshot.evaluate import load_run, run_recipe

    task = run_recipe(find_run(run_path)).task  # refuse before loading a (possibly large) model
    if task not in OUTPUTS:
        raise SlingshotError(
            f"{run_path} is a {task} run: ONNX export covers classification, regression and extractive_qa, whose "
            "answer is one forward pass; generation decodes token by token, which this export does not cover",
            f"for other runtimes start from a Hugging Face folder: {Path(run_path) / 'model'}, or after a LoRA run "
            f"`slingshot export {run_path} --merge`")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise SlingshotError(f"ONNX export needs the onnx and onnxruntime packages ({error.name} is missing)",
                             'pip install "slingshot-lm[onnx]"') from error

    loaded = load_run(run_path)
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
        outputs = OUTPUTS[task]
        per_token = task == "extractive_qa"  # (batch, sequence) logits, not (batch, labels)
        axes = {name: {0: "batch", 1: "sequence"} for name in names}
        axes |= {name: {0: "batch", 1: "sequence"} if per_token else {0: "batch"} for name in outputs}
        temporary = fp32_path.with_suffix(".partial")
        with torch.inference_mode():
            # The TorchScript exporter: the dynamo one needs onnxscript, and this graph is static apart from its axes.
            torch.onnx.export(_TensorsOnly(loaded.model, names, outputs), tuple(sample[name] for name in names),
                              str(temporary), input_names=list(names), output_names=list(outputs),
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        temporary.replace(fp32_path)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        temporary = target.with_suffix(".partial")
        # int8 weights, activations quantised on the fly: the usual CPU recipe for BERT-style encoders
        quantize_dynamic(str(fp32_path), str(temporary), weight_type=QuantType.QInt8)
        temporary.replace(target)
    export_s = time.perf_counter() - start

    check = (qa_agreement_check if task == "extractive_qa" else agreement_check)(loaded, int8, check_limit)
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


def qa_agreement_check(loaded, int8: bool, limit: int | None) -> dict[str, Any]:
    """Answer spans of the ONNX model against PyTorch's on the run's eval questions (the same windows, decoded by
    the task), and the largest start and end logit differences over all window tokens."""
    from slingshot.qa_data import load_qa_data

    split = load_qa_data(loaded.recipe, splits=("train", "eval")).splits["eval"]
    questions, contexts = list(split["question"])[:limit], list(split["context"])[:limit]
    sides = [QAPredictor(loaded, "torch"), QAPredictor(loaded, "onnx", int8=int8)]
    (torch_logits, windows), (onnx_logits, _) = (side.logits(questions, contexts) for side in sides)
    torch_spans = loaded.task.outputs(torch_logits, windows)
    onnx_spans = loaded.task.outputs(onnx_logits, windows)
    same = [(a, s) == (b, t) for a, s, b, t in zip(torch_spans["predicted"], torch_spans["start"],
                                                    onnx_spans["predicted"], onnx_spans["start"])]
    gaps = np.array([np.abs(a - b).max(axis=0) for a, b in zip(torch_logits, onnx_logits)]).reshape(-1, 2)
    start_gap, end_gap = (float(value) for value in gaps.max(axis=0)) if len(gaps) else (0.0, 0.0)
    return {"examples": len(questions), "windows": len(torch_logits),
            "span_agreement": float(np.mean(same)) if same else 1.0, "disagreements": int(len(same) - sum(same)),
            "max_start_logit_difference": start_gap, "max_end_logit_difference": end_gap}


def read_check(run_path: Path, int8: bool) -> dict | None:
    path = onnx_path(run_path, int8).parent / f"check{'-int8' if int8 else ''}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
