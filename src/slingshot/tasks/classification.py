"""Sequence classification (one label per text or text pair) and regression (one number), encoders or decoders."""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from slingshot.batching import PaddingCollator
from slingshot.errors import ModelError, RecipeError
from slingshot.metrics import classification_metrics, regression_metrics
from slingshot.models import ResolvedModel
from slingshot.pooling import append_mean_pooling_layer, resolve_pooling
from slingshot.recipe import DistillSection, Recipe

# LoRA targets per model family: the attention projections, as in the LoRA paper (Hu et al., 2021, section 4.2).
LORA_TARGETS = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "electra": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "modernbert": ["Wqkv"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class ClassificationTask:
    """Cross-entropy over label names, or MSE on one output for regression."""

    text_answers = False  # predictions are labels or numbers, not text
    batch_columns = ("input_ids", "attention_mask", "token_type_ids", "labels", "weights", "teacher")

    def __init__(self, regression: bool, distill: DistillSection | None = None):
        self.regression = regression
        self.name = "regression" if regression else "classification"
        self.distill = distill or DistillSection()

    # ------------------------------------------------------------------------------------------- data

    def prepare(self, splits: dict[str, Dataset], tokenizer, recipe: Recipe) -> dict[str, Dataset]:
        max_length = min(recipe.model.max_length, _model_max_length(tokenizer))

        def encode(batch: dict[str, list]) -> dict[str, list]:
            pair = batch.get("text_pair")
            encoded = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            if "label" in batch:
                encoded["labels"] = batch["label"]
            if "weight" in batch:  # per-example loss weights (teacher-label confidence)
                encoded["weights"] = batch["weight"]
            return encoded

        # A fingerprint of our own: without one, datasets hashes `encode` with everything it closes over, the
        # tokenizer included, which took ~1.2 s per run (a fifth of an 8-per-class few-shot run, profiled). The
        # result stays in memory and is never looked up in a cache, so the fingerprint only has to be unique.
        return {
            split: dataset.map(encode, batched=True, batch_size=2000, desc=None, keep_in_memory=True,
                               new_fingerprint=f"slingshot-encode-{uuid.uuid4().hex}")
            for split, dataset in splits.items()
        }

    def collator(self, tokenizer) -> PaddingCollator:
        return PaddingCollator(tokenizer.pad_token_id, torch.float32 if self.regression else torch.long)

    # ------------------------------------------------------------------------------------------- model

    def build_model(self, resolved: ResolvedModel, recipe: Recipe, label_names: list[str] | None) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        try:
            config = AutoConfig.from_pretrained(str(resolved.path))
        except Exception as exc:
            raise ModelError(f"cannot read the config of {resolved.path}: {str(exc).splitlines()[0][:200]}") from None
        if self.regression:
            config.num_labels = 1
            config.problem_type = "regression"
            config.id2label, config.label2id = {0: "score"}, {"score": 0}
        else:
            assert label_names is not None
            config.num_labels = len(label_names)
            config.problem_type = "single_label_classification"
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
        if getattr(config, "pad_token_id", None) is None:
            # Decoder classifiers (GPT-2) find the last real token through pad_token_id; pad = eos as the tokenizer.
            config.pad_token_id = getattr(config, "eos_token_id", None)
        # The new head is reported as missing weights: expected, and noise for our users.
        quantized = {"quantization_config": qlora_quantization()} if recipe.train.method == "qlora" else {}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(resolved.path), config=config, **quantized)
        except ValueError as exc:
            raise ModelError(
                f"{resolved.name} cannot be used for sequence classification: {str(exc).splitlines()[0][:200]}",
                "choose an encoder (BERT family) or decoder (GPT-2 family) model",
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
        if resolve_pooling(recipe, resolved.path, model) == "mean":
            append_mean_pooling_layer(model)
            model.config.slingshot_pooling = "mean"  # saved in config.json: the last layer pools, it is not trained
        if recipe.train.method == "qlora":
            from peft import prepare_model_for_kbit_training

            # QLoRA's recipe (Dettmers et al. 2023): norms in fp32, gradient checkpointing always on
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        if recipe.train.method in ("lora", "qlora"):
            model = apply_lora(model, recipe)
        return model

    def load_model(self, path: Path) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(path)).eval()

    # ------------------------------------------------------------------------------------------- training

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits, (batch, classes)."""
        return model(**batch).logits

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        labels = batch.pop("labels")
        weights = batch.pop("weights", None)  # (batch,) when examples are weighted, e.g. by teacher confidence
        teacher = batch.pop("teacher", None)  # distillation targets (slingshot.distill)
        logits = model(**batch).logits
        if self.regression:
            per_example = F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="none")
        else:
            per_example = F.cross_entropy(logits.float(), labels, reduction="none")
        if teacher is not None:
            from slingshot.distill import soft_loss

            alpha = self.distill.alpha
            soft = (F.mse_loss(logits.squeeze(-1).float(), teacher, reduction="none") if self.regression
                    else soft_loss(logits, teacher, self.distill.temperature))
            per_example = (1 - alpha) * per_example + alpha * soft
        if weights is None:
            return per_example.sum(), labels.shape[0]
        return (per_example * weights).sum(), float(weights.sum())

    def fit_head(self, model, encoded, collate, recipe, device, amp_dtype) -> None:
        """Nothing to do: the classification head trains with the body, through the loss."""

    def loss_items(self, batch: dict[str, torch.Tensor]) -> float:
        if "weights" in batch:  # examples weighted, e.g. by teacher confidence: the loss sums weighted losses
            return float(batch["weights"].sum())
        return int(batch["labels"].shape[0])  # examples

    # ------------------------------------------------------------------------------------------- evaluation

    def outputs(self, logits: np.ndarray, encoded: Dataset) -> dict[str, np.ndarray]:
        if self.regression:
            return {"predicted": logits[:, 0]}
        probabilities = softmax(logits)
        return {"predicted": probabilities.argmax(-1), "probabilities": probabilities}

    def metrics(self, outputs: dict[str, np.ndarray], encoded: Dataset, label_names: list[str] | None) -> dict[str, Any]:
        references = encoded["labels"]
        if self.regression:
            return regression_metrics(outputs["predicted"], references)
        assert label_names is not None
        return classification_metrics(outputs["predicted"], references, label_names)

    def eval_loss(self, logits: np.ndarray, encoded: Dataset) -> float:
        references = encoded["labels"]
        if self.regression:
            return float(np.mean((logits[:, 0] - np.asarray(references, dtype=float)) ** 2))
        probabilities = softmax(logits.astype(np.float64))
        picked = probabilities[np.arange(len(references)), np.asarray(references)]
        return float(-np.log(np.clip(picked, 1e-12, None)).mean())

    def records(self, dataset: Dataset, outputs: dict[str, np.ndarray], label_names: list[str] | None) -> list[dict]:
        """One predictions.jsonl line per example: row, text, gold, predicted, probabilities."""
        rows = []
        texts = dataset["text"]
        pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else None
        gold = dataset["label"] if "label" in dataset.column_names else None
        lines = dataset["row"] if "row" in dataset.column_names else list(range(len(texts)))
        for i, text in enumerate(texts):
            record: dict[str, Any] = {"row": lines[i], "text": text}
            if pairs is not None:
                record["text_pair"] = pairs[i]
            if self.regression:
                if gold is not None:
                    record["gold"] = float(gold[i])
                record["predicted"] = float(outputs["predicted"][i])
            else:
                assert label_names is not None
                if gold is not None:
                    record["gold"] = label_names[gold[i]]
                record["predicted"] = label_names[int(outputs["predicted"][i])]
                record["probability"] = round(float(outputs["probabilities"][i].max()), 6)
                record["probabilities"] = {
                    name: round(float(p), 6) for name, p in zip(label_names, outputs["probabilities"][i])
                }
            rows.append(record)
        return rows

    # ------------------------------------------------------------------------------------------- saving

    def save(self, model: torch.nn.Module, tokenizer, path: Path, adapter_path: Path | None = None) -> None:
        save_model_folder(model, tokenizer, path, adapter_path)


def save_model_folder(model: torch.nn.Module, tokenizer, path: Path, adapter_path: Path | None = None) -> None:
    """Full weights in `path` (LoRA merged in, so `pipeline` loads it); the bare adapter in `adapter_path`."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if adapter_path is not None:
            model.save_pretrained(str(adapter_path))
        merged = _merged_copy(model)
        merged.save_pretrained(str(path), safe_serialization=True)
    else:
        model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def _model_max_length(tokenizer) -> int:
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if value and value < 1_000_000 else 1_000_000


def qlora_quantization():
    """4-bit NormalFloat weights with double quantization and bf16 compute (the QLoRA paper's setting).

    Raises RecipeError before anything is loaded where it cannot run: bitsandbytes' 4-bit kernels need a CUDA GPU.
    """
    import importlib.util

    if not torch.cuda.is_available():
        raise RecipeError("train.method: qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available",
                          "use train.method: lora on this machine, or run on a GPU (`slingshot plan --hardware ...`)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError("train.method: qlora needs the bitsandbytes package", "pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


@contextlib.contextmanager
def quiet_peft_deprecation() -> Iterator[None]:
    """Wrapping a model in PEFT (new adapters or saved ones) makes peft ask transformers for its deprecated
    `is_gradient_checkpointing` alias: a FutureWarning the user cannot act on, hidden here and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(model: torch.nn.Module, recipe: Recipe, task_type=None,
               default_targets: list[str] | str | None = None) -> torch.nn.Module:
    """LoRA adapters on recipe.train.lora.target_modules, else `default_targets`, else the model family's attention
    projections (LORA_TARGETS); task_type (a peft TaskType) defaults to SEQ_CLS."""
    from peft import LoraConfig, TaskType, get_peft_model

    model_type = model.config.model_type
    targets = recipe.train.lora.target_modules or default_targets or LORA_TARGETS.get(model_type)
    config = LoraConfig(
        task_type=task_type or TaskType.SEQ_CLS,
        r=recipe.train.lora.r,
        lora_alpha=recipe.train.lora.alpha,
        lora_dropout=recipe.train.lora.dropout,
        target_modules=targets,
    )
    try:
        with quiet_peft_deprecation():
            return get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeError(
            f"LoRA cannot target {targets or 'the default modules'} in a '{model_type}' model: {str(exc)[:160]}",
            "set train.lora.target_modules to linear layer names of this model",
        ) from None


def _merged_copy(model) -> torch.nn.Module:
    """The LoRA weights folded into a copy of the base model; the trained PeftModel stays untouched."""
    import copy

    return copy.deepcopy(model).merge_and_unload()
