"""The one inference path for a finished classification or regression run, shared by `predict`, `compare` and
`serve`: tokenize without a Dataset round trip, batch length-sorted texts under a token budget, answer in input
order, on PyTorch (fp32 or bf16 autocast) or an exported ONNX model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from slingshot.errors import RunDirError, SlingshotError
from slingshot.inference import encode_texts, forward_logits
from slingshot.tasks.classification import _model_max_length, softmax

Backend = Literal["torch", "onnx"]


class OnnxModule(torch.nn.Module):
    """An ONNX Runtime session behind the nn.Module call that forward_logits makes."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        feeds = {name: batch[name].numpy().astype(np.int64) for name in self.input_names if name in batch}
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])


def onnx_path(run_path: Path, int8: bool = False) -> Path:
    return run_path / "onnx" / ("model-int8.onnx" if int8 else "model.onnx")


class Predictor:
    """Labels and probabilities (or scores) of texts from a finished run.

    Raises:
        RunDirError: backend onnx asked for a run that has not been exported.
        SlingshotError: the run's task has no text-label predictions (extractive QA, generation).
    """

    def __init__(self, loaded, backend: Backend = "torch", precision: Literal["fp32", "bf16"] = "fp32",
                 int8: bool = False, threads: int | None = None):
        if loaded.task.name not in ("classification", "regression"):
            raise SlingshotError(f"{loaded.run.path} is a {loaded.task.name} run; this path serves labels and scores",
                                 "use predict --question/--context for extractive QA runs")
        self.loaded = loaded
        self.backend = backend
        self.label_names: list[str] | None = loaded.label_names
        self.max_length = min(loaded.recipe.model.max_length, _model_max_length(loaded.tokenizer))
        self.collate = loaded.task.collator(loaded.tokenizer)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" and backend == "torch" else None
        if backend == "onnx":
            path = onnx_path(loaded.run.path, int8)
            if not path.is_file():
                raise RunDirError(f"{loaded.run.path} has no ONNX export ({path.name})",
                                  f"run: slingshot export {loaded.run.path} --onnx{' --int8' if int8 else ''}")
            self.model: torch.nn.Module = OnnxModule(path, threads)
        else:
            self.model = loaded.model
        self.name = f"{loaded.run.path.name} ({backend}{', int8' if int8 else ''}" \
                    f"{', bf16' if self.autocast_dtype else ''})"

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        encoded = encode_texts(self.loaded.tokenizer, texts, pairs, self.max_length)
        if self.backend == "onnx":
            return forward_logits(self.model, encoded, self.collate, forward=lambda model, batch: model(**batch))
        return forward_logits(self.model, encoded, self.collate, autocast_dtype=self.autocast_dtype)

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Per text: {"label", "probability", "probabilities"} (classification) or {"score"} (regression)."""
        if not texts:
            return []
        logits = self.logits(texts, pairs)
        if self.label_names is None:
            return [{"score": float(value)} for value in logits[:, 0]]
        probabilities = softmax(logits.astype(np.float64))
        results = []
        for row in probabilities:
            best = int(row.argmax())
            results.append({"label": self.label_names[best], "probability": round(float(row[best]), 6),
                            "probabilities": {name: round(float(p), 6) for name, p in zip(self.label_names, row)}})
        return results

    def labels(self, texts: list[str], pairs: list[str] | None = None) -> list:
        """Only the label (or score) of each text: what compare and accuracy checks need."""
        if not texts:
            return []
        logits = self.logits(texts, pairs)
        if self.label_names is None:
            return [float(value) for value in logits[:, 0]]
        return [self.label_names[int(index)] for index in logits.argmax(-1)]


