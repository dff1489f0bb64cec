"""The one inference path for a finished run, shared by `predict`, `compare`, `export --onnx` and `serve`:

    Predictor            labels and probabilities (classification) or scores (regression) of texts
    QAPredictor          answer spans of questions in their contexts (extractive_qa)
    GenerationPredictor  written answers to conversations (generation)

Inputs are tokenized without a Dataset round trip and batched length-sorted under a token budget; results come back
in input order, from PyTorch (fp32 or bf16 autocast) or, for classification and QA, an exported ONNX model.
`load_predictor` picks the one for a run's task.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError

from slingshot.errors import RecipeError, RunDirError, SlingshotError
from slingshot.inference import encode_texts, forward_logits
from slingshot.recipe import GenerationSection
from slingshot.tasks.classification import _model_max_length, softmax

Backend = Literal["torch", "onnx"]
Precision = Literal["fp32", "bf16"]


class OnnxModule(torch.nn.Module):
    """An ONNX Runtime session behind the nn.Module call a task makes: the graph's outputs come back as attributes
    (`logits`, or `start_logits` and `end_logits`), as a Transformers model's output would."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.output_names = [item.name for item in self.session.get_outputs()]

    def forward(self, **batch: torch.Tensor) -> SimpleNamespace:
        feeds = {name: batch[name].numpy().astype(np.int64) for name in self.input_names if name in batch}
        values = self.session.run(self.output_names, feeds)
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, values)})


def onnx_path(run_path: Path, int8: bool = False) -> Path:
    return run_path / "onnx" / ("model-int8.onnx" if int8 else "model.onnx")


def _model(loaded, backend: Backend, int8: bool, threads: int | None) -> torch.nn.Module:
    """The run's PyTorch model, or a session on its ONNX export. Raises RunDirError when it was not exported."""
    if backend == "torch":
        return loaded.model
    path = onnx_path(loaded.run.path, int8)
    if not path.is_file():
        raise RunDirError(f"{loaded.run.path} has no ONNX export ({path.name})",
                          f"run: slingshot export {loaded.run.path} --onnx{' --int8' if int8 else ''}")
    return OnnxModule(path, threads)


def _name(loaded, backend: Backend, int8: bool, autocast_dtype: torch.dtype | None) -> str:
    return f"{loaded.run.path.name} ({backend}{', int8' if int8 else ''}{', bf16' if autocast_dtype else ''})"


class Predictor:
    """Labels and probabilities (or scores) of texts from a finished classification or regression run.

    Raises:
        RunDirError: backend onnx asked for a run that has not been exported.
        SlingshotError: the run's task has no text-label predictions (extractive QA, generation).
    """

    def __init__(self, loaded, backend: Backend = "torch", precision: Precision = "fp32",
                 int8: bool = False, threads: int | None = None):
        if loaded.task.name not in ("classification", "regression"):
            raise SlingshotError(f"{loaded.run.path} is a {loaded.task.name} run; this path serves labels and scores",
                                 "use load_predictor(run), which picks QAPredictor or GenerationPredictor")
        self.loaded = loaded
        self.backend = backend
        self.label_names: list[str] | None = loaded.label_names
        self.max_length = min(loaded.recipe.model.max_length, _model_max_length(loaded.tokenizer))
        self.collate = loaded.task.collator(loaded.tokenizer)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" and backend == "torch" else None
        self.model = _model(loaded, backend, int8, threads)
        self.name = _name(loaded, backend, int8, self.autocast_dtype)

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        encoded = encode_texts(self.loaded.tokenizer, texts, pairs, self.max_length)
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


class QAPredictor:
    """Answer spans of questions in their contexts from a finished extractive-QA run.

    The task cuts the windows and decodes the spans (the code evaluation uses); only the start/end logits come
    from PyTorch or the ONNX export.

    Raises:
        RunDirError: backend onnx asked for a run that has not been exported.
    """

    def __init__(self, loaded, backend: Backend = "torch", precision: Precision = "fp32",
                 int8: bool = False, threads: int | None = None):
        self.loaded = loaded
        self.backend = backend
        self.task = loaded.task
        self.max_length = self.task.window_length(loaded.tokenizer, loaded.recipe)
        self.collate = self.task.collator(loaded.tokenizer)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" and backend == "torch" else None
        self.model = _model(loaded, backend, int8, threads)
        self.name = _name(loaded, backend, int8, self.autocast_dtype)

    def logits(self, questions: list[str], contexts: list[str]) -> tuple[list[np.ndarray], dict[str, list]]:
        """Start/end logits, (length, 2), of every window, and the windows themselves."""
        windows = self.task.question_windows(questions, contexts, self.loaded.tokenizer, self.max_length)
        logits = forward_logits(self.model, windows, self.collate, forward=self.task.forward,
                                autocast_dtype=self.autocast_dtype)
        return logits, windows

    def outputs(self, questions: list[str], contexts: list[str]) -> dict[str, list]:
        """The task's outputs, one per question: predicted, start, score, question_cut (and an empty gold)."""
        return self.task.outputs(*self.logits(questions, contexts))

    def predict(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Per (question, context): {"answer", "score", "start", "end"}, start and end in characters of the context
        (answer "" and the others None when no valid span was found)."""
        if not pairs:
            return []
        logits, windows = self.logits([q for q, _ in pairs], [c for _, c in pairs])
        outputs = self.task.outputs(logits, windows)
        results = []
        for answer, start, score in zip(outputs["predicted"], outputs["start"], outputs["score"]):
            results.append({"answer": answer, "score": score, "start": start,
                            "end": start + len(answer) if start is not None else None})
        return results


def decoding_settings(settings: GenerationSection, **decoding: Any) -> GenerationSection:
    """The run's generation settings with max_new_tokens, temperature or top_p replaced where given (not None).

    Raises RecipeError naming the option when a value is out of its range.
    """
    chosen = {key: value for key, value in decoding.items() if value is not None}
    if not chosen:
        return settings
    try:
        return GenerationSection.model_validate({**settings.model_dump(), **chosen})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RecipeError(f"invalid decoding option: {problems}", "see `slingshot predict --help`") from None


class GenerationPredictor:
    """Written answers of a finished generation run to conversations: the run's chat template, then the task's
    decoding (`generate_answers`: length-sorted, left-padded batches; greedy, or seeded sampling), on PyTorch.

    Raises:
        SlingshotError: backend onnx (a generation run has no ONNX export).
    """

    def __init__(self, loaded, backend: Backend = "torch", precision: Precision = "fp32",
                 int8: bool = False, threads: int | None = None):
        from slingshot.chat_template import choose_template

        if backend != "torch":
            raise SlingshotError(f"{loaded.run.path} is a generation run: it answers on PyTorch only, there is no "
                                 "ONNX export of it", "use --backend torch (the default)")
        self.loaded = loaded
        self.backend = backend
        self.settings = loaded.recipe.generation
        # seq2seq: the encoder reads the conversation as one plain text; the decoder writes from its own start
        self.seq2seq = loaded.task.name == "seq2seq"
        if not self.seq2seq:
            loaded.tokenizer.chat_template = choose_template(loaded.tokenizer, self.settings.template)  # as prepare
        self.max_length = min(loaded.recipe.model.max_length, _model_max_length(loaded.tokenizer))
        config = loaded.model.config
        # GPT-2's learned positions end at n_positions: a longer sequence fails, so answers are cut to fit
        self.positions: int | None = None if self.seq2seq else (
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None))
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.model = loaded.model
        self.name = _name(loaded, backend, False, self.autocast_dtype)

    def conversation(self, prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
        """A prompt, or a chat's {role, content} messages, as the conversation the run was trained on: the recipe's
        system prompt goes first when it has one and the messages none (as `slingshot predict --prompt` does)."""
        from slingshot.chat_data import conversation

        column = self.settings.prompt_column if isinstance(prompt, str) else self.settings.messages_column
        return conversation({column: prompt}, self.settings, "request")

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation followed by the generation prompt: what the model continues."""
        from slingshot.chat_template import encode_prompt

        if self.seq2seq:
            from slingshot.chat_data import source_text

            return self.loaded.tokenizer(source_text(messages))["input_ids"]
        return encode_prompt(self.loaded.tokenizer, messages)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None,
                 seed: int | None = None) -> list[dict[str, Any]]:
        """Per prompt (token ids): {"text", "stopped_at_eos", "prompt_tokens", "completion_tokens"}, in input order.

        Decoding options not given are the recipe's; seed defaults to the run's (as `slingshot predict`).
        Raises RecipeError for an option out of its range.
        """
        from slingshot.tasks.generation import generate_answers

        if not prompts:
            return []
        settings = decoding_settings(self.settings, max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_p=top_p)
        longest = max(len(prompt) for prompt in prompts)
        if self.positions is not None and longest + settings.max_new_tokens > self.positions:
            settings = settings.model_copy(update={"max_new_tokens": max(self.positions - longest, 1)})
        from slingshot.tasks.seq2seq import generate_targets

        decode = generate_targets if self.seq2seq else generate_answers
        outputs = decode(self.model, self.loaded.tokenizer, prompts, settings,
                                   autocast_dtype=self.autocast_dtype,
                                   seed=self.loaded.recipe.train.seed if seed is None else seed)
        return [{"text": text, "stopped_at_eos": stopped, "prompt_tokens": len(prompt), "completion_tokens": new}
                for text, stopped, new, prompt in zip(outputs["predicted"], outputs["stopped_at_eos"],
                                                      outputs["new_tokens"], prompts)]


def load_predictor(loaded, backend: Backend = "torch", precision: Precision = "fp32", int8: bool = False,
                   threads: int | None = None) -> Predictor | QAPredictor | GenerationPredictor:
    """The predictor of the run's task. Raises SlingshotError for a task without one."""
    kinds: dict[str, type] = {"classification": Predictor, "regression": Predictor, "extractive_qa": QAPredictor,
                              "generation": GenerationPredictor, "seq2seq": GenerationPredictor}
    if loaded.task.name not in kinds:
        raise SlingshotError(f"{loaded.run.path} is a {loaded.task.name} run, which has no prediction path yet",
                             f"predictions are served for {', '.join(kinds)} runs")
    return kinds[loaded.task.name](loaded, backend=backend, precision=precision, int8=int8, threads=threads)
