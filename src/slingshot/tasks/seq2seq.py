"""Fine-tuning of encoder-decoder models (T5, Flan-T5, BART): the encoder reads a source, the decoder writes its target.

    source text --encoder--> states;  <start> target --decoder (teacher forcing)--> next-token loss on target tokens
    held-out source --encoder--> generate (greedy, beam search or sampling) until EOS --> text --> EM, ROUGE-L, similarity

Data are the conversations of task generation (chat_data.py): prompt/completion columns (source/target pairs, with
generation.prompt_column and completion_column naming them) or chat messages such as docs2qa's export, whose
question becomes the source and whose answer the target (`source_text`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from slingshot.batching import token_budget_batches
from slingshot.chat_data import reference_answer, source_text
from slingshot.errors import ModelError
from slingshot.inference import EVAL_MAX_BATCH_SIZE, EVAL_TOKENS_PER_BATCH
from slingshot.models import ResolvedModel
from slingshot.recipe import GenerationSection, Recipe
from slingshot.tasks.classification import _model_max_length
from slingshot.tasks.generation import (
    IGNORE,
    adapt,
    answer_metrics,
    answer_records,
    decoding_options,
    load_adapter_model,
    pretrained_options,
    save_generator,
    stop_token_ids,
)

# LoRA on the attention's query and value projections: the LoRA paper's choice (Hu et al., 2021, section 7.1) and
# PEFT's default for these families. Families not listed get PEFT's "all-linear".
LORA_TARGETS = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
}


class Seq2SeqCollator:
    """Right-pads sources (pad id, with their attention mask) and targets (-100, with a decoder mask that only counts
    target tokens for the loop's throughput figures). Keeps the tokenizer: decoding generated targets needs it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        count = len(examples)
        longest = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((count, longest), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((count, longest), dtype=torch.long)
        for row, example in enumerate(examples):
            input_ids[row, : len(example["input_ids"])] = torch.as_tensor(example["input_ids"])
            attention_mask[row, : len(example["input_ids"])] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in examples[0]:
            target_longest = max(max(len(e["labels"]) for e in examples), 1)
            labels = torch.full((count, target_longest), IGNORE, dtype=torch.long)
            decoder_attention_mask = torch.zeros((count, target_longest), dtype=torch.long)
            for row, example in enumerate(examples):
                labels[row, : len(example["labels"])] = torch.as_tensor(example["labels"], dtype=torch.long)
                decoder_attention_mask[row, : len(example["labels"])] = 1
            batch["labels"] = labels
            batch["decoder_attention_mask"] = decoder_attention_mask
        return batch


def shift_right(labels: torch.Tensor, start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """The decoder's inputs for teacher forcing: each target behind the start token, -100 read as padding; what T5
    and BART build from `labels` themselves (their `_shift_right` / `shift_tokens_right`)."""
    shifted = labels.new_full(labels.shape, start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE, pad_token_id)


@torch.inference_mode()
def generate_targets(model: torch.nn.Module, tokenizer, sources: list[list[int]], settings: GenerationSection, *,
                     device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                     seed: int = 0) -> dict[str, list]:
    """Target text for each source (token ids), in input order, with whether it stopped at EOS and its length.

    Sources are batched by length under a token budget and right-padded (the encoder masks the padding).
    temperature 0 decodes greedily (or by beam search, num_beams > 1); above 0 samples (top_p nucleus), seeded
    without touching the global RNG.
    """
    device = torch.device(device)
    stops = stop_token_ids(model, tokenizer)
    lengths = [len(s) for s in sources]
    batches = token_budget_batches([(n + settings.max_new_tokens) * settings.num_beams for n in lengths],
                                   EVAL_TOKENS_PER_BATCH, EVAL_MAX_BATCH_SIZE, shuffle=False)
    options = decoding_options(settings) | {"eos_token_id": stops, "pad_token_id": tokenizer.pad_token_id}
    texts, stopped, new_tokens = [""] * len(sources), [False] * len(sources), [0] * len(sources)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), autocast:
        torch.manual_seed(seed)
        for indices in batches:
            longest = max(lengths[i] for i in indices)
            input_ids = torch.full((len(indices), longest), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(indices), longest), dtype=torch.long)
            for row, index in enumerate(indices):
                input_ids[row, : lengths[index]] = torch.as_tensor(sources[index])
                attention_mask[row, : lengths[index]] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options)
            for row, index in enumerate(indices):
                tokens = output[row, 1:].tolist()  # after the decoder's start token
                end = next((k for k, token in enumerate(tokens) if token in stops), None)
                answer = tokens if end is None else tokens[:end]
                texts[index] = tokenizer.decode(answer, skip_special_tokens=True).strip()
                stopped[index], new_tokens[index] = end is not None, len(answer)
    model.train(was_training)
    return {"predicted": texts, "stopped_at_eos": stopped, "new_tokens": new_tokens}


class Seq2SeqTask:
    """Encoder-decoder fine-tuning with the loss on target tokens only; targets generated and scored as text."""

    name = "seq2seq"
    text_answers = True  # predictions are text: answer-similarity evaluation applies
    batch_columns = ("input_ids", "labels")
    forward_columns = ("input_ids", "labels")  # the evaluation loss runs the decoder over the reference

    def __init__(self, settings: GenerationSection, seed: int = 0):
        self.settings = settings
        self.seed = seed

    # ------------------------------------------------------------------------------------------- data

    def prepare(self, splits: dict[str, Dataset], tokenizer, recipe: Recipe) -> dict[str, Dataset]:
        """Source ids (cut at model.max_length, keeping the tokenizer's EOS), target ids as labels (cut at
        generation.max_new_tokens: longer than the model may write anyway), and `length` = both, the batch cost."""
        max_length = min(recipe.model.max_length, _model_max_length(tokenizer))
        max_target = self.settings.max_new_tokens

        def encode(example: dict) -> dict:
            text = source_text(example["messages"])
            source = tokenizer(text)["input_ids"]
            truncated = len(source) > max_length
            if truncated:
                source = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            reference = reference_answer(example["messages"])
            labels = [] if reference is None else tokenizer(text_target=reference, truncation=True,
                                                            max_length=max_target)["input_ids"]
            return {"input_ids": source, "labels": labels, "length": len(source) + len(labels),
                    "reference": reference or "", "truncated": truncated}

        return {split: dataset.map(encode, remove_columns=dataset.column_names, keep_in_memory=True)
                for split, dataset in splits.items()}

    def collator(self, tokenizer) -> Seq2SeqCollator:
        return Seq2SeqCollator(tokenizer)

    # ------------------------------------------------------------------------------------------- model

    def build_model(self, resolved: ResolvedModel, recipe: Recipe, label_names: list[str] | None) -> torch.nn.Module:
        """The encoder-decoder, with LoRA (or QLoRA) when the method asks. Raises ModelError for a decoder-only or
        encoder-only model, naming the task that fits it."""
        from peft import TaskType
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        try:
            config = AutoConfig.from_pretrained(str(resolved.path))
        except (ValueError, OSError) as exc:
            raise ModelError(f"cannot read the config of {resolved.name}: {str(exc).splitlines()[0][:200]}",
                             "point model.name at a Hugging Face model folder") from None
        if not getattr(config, "is_encoder_decoder", False):
            raise ModelError(f"{resolved.name} is a '{config.model_type}' model, not an encoder-decoder: task seq2seq "
                             "needs one", "choose an encoder-decoder such as T5, Flan-T5 or BART; for a decoder "
                             "(GPT-2, Llama, Qwen2.5) use task: generation")
        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(str(resolved.path), **pretrained_options(recipe.train.method))
        except (ValueError, OSError) as exc:
            raise ModelError(f"{resolved.name} cannot be used for seq2seq: {str(exc).splitlines()[0][:200]}",
                             "choose an encoder-decoder with a language-model head, such as T5, Flan-T5 or BART") from None
        return adapt(model, recipe, TaskType.SEQ_2_SEQ_LM, LORA_TARGETS.get(config.model_type, "all-linear"))

    def load_model(self, path: Path) -> torch.nn.Module:
        """The run's model; a LoRA run's adapter is merged into its base in memory (plain forward speed)."""
        from transformers import AutoModelForSeq2SeqLM

        if (path / "adapter_config.json").is_file():
            return load_adapter_model(path).merge_and_unload().eval()
        return AutoModelForSeq2SeqLM.from_pretrained(str(path), dtype=torch.float32).eval()

    # ------------------------------------------------------------------------------------------- training

    @staticmethod
    def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The decoder is causal: a real target token never attends to the padding after it, so the decoder mask is
        # left out (it would only cost the fast causal attention path).
        config = getattr(model, "module", model).config  # `module`: wrapped by DDP under `accelerate launch`
        decoder_input_ids = shift_right(batch["labels"], config.decoder_start_token_id, config.pad_token_id)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=decoder_input_ids, use_cache=False).logits  # (batch, target, vocab)

    def fit_head(self, model, encoded, collate, recipe, device, amp_dtype) -> None:
        """Nothing to fit: the language-model head is trained by the loss."""

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-probability of each target token under teacher forcing, (batch, target, 1); padding holds junk."""
        logits = self._logits(model, batch).float()
        targets = batch["labels"].clamp(min=0)[..., None]  # -100 gathers token 0; eval_loss never reads it
        return logits.log_softmax(-1).gather(-1, targets)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Cross-entropy summed over target tokens (EOS included, padding not), and their number."""
        labels = batch["labels"]
        logits = self._logits(model, batch)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return loss, int((labels != IGNORE).sum())

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    # ------------------------------------------------------------------------------------------- evaluation

    def generate(self, model: torch.nn.Module, encoded: Dataset, collate: Seq2SeqCollator,
                 device: torch.device, autocast_dtype: torch.dtype | None) -> dict[str, list]:
        outputs = generate_targets(model, collate.tokenizer, encoded["input_ids"], self.settings, device=device,
                                   autocast_dtype=autocast_dtype, seed=self.seed)
        outputs["gold"] = [[r] if r else [] for r in encoded["reference"]]
        outputs["truncated"] = encoded["truncated"]
        return outputs

    def metrics(self, outputs: dict[str, list], encoded: Dataset, label_names: list[str] | None) -> dict[str, Any]:
        return answer_metrics(outputs)

    def eval_loss(self, logits: list[np.ndarray], encoded: Dataset) -> float:
        """Mean cross-entropy per target token, as in training."""
        total, tokens = 0.0, 0
        for log_probabilities, labels in zip(logits, encoded["labels"]):
            total -= float(log_probabilities[: len(labels), 0].sum())
            tokens += len(labels)
        return total / tokens if tokens else 0.0

    def records(self, dataset: Dataset, outputs: dict[str, list], label_names: list[str] | None) -> list[dict]:
        return answer_records(dataset, outputs)

    # ------------------------------------------------------------------------------------------- saving

    def save(self, model: torch.nn.Module, tokenizer, path: Path, adapter_path: Path | None = None) -> None:
        """Full weights, or the LoRA adapter alone (save_generator); `slingshot export RUN --merge` folds it in."""
        save_generator(model, tokenizer, path)
