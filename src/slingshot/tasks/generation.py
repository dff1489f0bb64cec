"""Generative fine-tuning of causal language models: the model learns to write the answer of a conversation.

    conversation --chat template--> prompt tokens (no loss) + answer tokens + EOS (loss) --model--> next-token loss
    held-out prompt --chat template + generation prompt--> generate until EOS --> answer text --> EM, ROUGE-L, similarity

Short training conversations can be packed into rows of `model.max_length` tokens. Each keeps to itself: its
positions restart at 0, and Transformers 5 turns restarting positions (with no attention mask) into a
block-diagonal causal mask, so a packed conversation's logits equal its logits alone (tested).
"""

from __future__ import annotations

import bisect
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from slingshot.batching import token_budget_batches
from slingshot.chat_data import prompt_messages, reference_answer
from slingshot.chat_template import choose_template, encode_conversation, encode_prompt
from slingshot.errors import ModelError
from slingshot.inference import EVAL_MAX_BATCH_SIZE, EVAL_TOKENS_PER_BATCH
from slingshot.metrics import generation_metrics
from slingshot.models import ResolvedModel, resolve_model
from slingshot.recipe import GenerationSection, Recipe
from slingshot.tasks.classification import _model_max_length, apply_lora, qlora_quantization, quiet_peft_deprecation

IGNORE = -100  # label of a token that carries no loss (prompt, padding): cross_entropy's ignore_index

# LoRA on every linear layer of the blocks: the QLoRA paper found adapting all of them, not attention alone,
# is what matches full fine-tuning (Dettmers et al., 2023, section 4). Families not listed get PEFT's "all-linear".
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most `capacity` tokens, best fit, longest first (few rows, little room left).

    Each example goes into the fullest row it still fits in, else opens a new row. Deterministic.
    """
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, row index), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        slot = bisect.bisect_left(room, (length, -1))
        if slot < len(room):
            left, row = room.pop(slot)
            rows[row].append(index)
            bisect.insort(room, (left - length, row))
        else:
            rows.append([index])
            bisect.insort(room, (capacity - length, len(rows) - 1))
    return rows


class GenerationCollator:
    """Right-pads token ids (pad id), labels (-100) and, for packed rows, position ids; adds the attention mask.

    Keeps the tokenizer: decoding generated answers needs it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        count = len(examples)
        input_ids = torch.full((count, longest), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((count, longest), dtype=torch.long)
        labels = torch.full((count, longest), IGNORE, dtype=torch.long)
        packed = "position_ids" in examples[0]
        # Padding gets positions 0, 1, ... of its own: a separate "conversation" that nothing real attends to.
        position_ids = torch.arange(longest).repeat(count, 1) if packed else None
        for row, example in enumerate(examples):
            size = len(example["input_ids"])
            input_ids[row, :size] = torch.as_tensor(example["input_ids"])
            attention_mask[row, :size] = 1
            if "labels" in example:
                labels[row, :size] = torch.as_tensor(example["labels"])
            if position_ids is not None:
                position_ids[row, :size] = torch.as_tensor(example["position_ids"])
                position_ids[row, size:] = torch.arange(longest - size)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in examples[0]:
            batch["labels"] = labels
        if position_ids is not None:
            batch["position_ids"] = position_ids
        return batch


def stop_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (instruct models list their end-of-turn token)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def decoding_options(settings: GenerationSection) -> dict[str, Any]:
    """model.generate's options of the recipe's decoding: greedy or beam search at temperature 0, else sampling."""
    options: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "num_beams": settings.num_beams,
                               "do_sample": settings.temperature > 0}
    if settings.temperature > 0:
        options.update(temperature=settings.temperature, top_p=settings.top_p)
    return options


@torch.inference_mode()
def generate_answers(model: torch.nn.Module, tokenizer, prompts: list[list[int]], settings: GenerationSection, *,
                     device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                     seed: int = 0) -> dict[str, list]:
    """Answer text for each prompt (token ids), in input order, with whether it stopped at EOS and its length.

    Prompts are batched by length under a token budget and left-padded, so each continues from its last token.
    temperature 0 decodes greedily (or by beam search, num_beams > 1); above 0 samples (top_p nucleus), seeded
    without touching the global RNG.
    """
    device = torch.device(device)
    stops = stop_token_ids(model, tokenizer)
    lengths = [len(p) for p in prompts]
    # every beam is a sequence of its own: the budget counts them all
    batches = token_budget_batches([(n + settings.max_new_tokens) * settings.num_beams for n in lengths],
                                   EVAL_TOKENS_PER_BATCH, EVAL_MAX_BATCH_SIZE, shuffle=False)
    options = decoding_options(settings) | {"eos_token_id": stops, "pad_token_id": tokenizer.pad_token_id}
    texts, stopped, new_tokens = [""] * len(prompts), [False] * len(prompts), [0] * len(prompts)
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
                input_ids[row, longest - lengths[index]:] = torch.as_tensor(prompts[index])
                attention_mask[row, longest - lengths[index]:] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options)
            for row, index in enumerate(indices):
                tokens = output[row, longest:].tolist()
                end = next((k for k, token in enumerate(tokens) if token in stops), None)
                answer = tokens if end is None else tokens[:end]
                texts[index] = tokenizer.decode(answer, skip_special_tokens=True).strip()
                stopped[index], new_tokens[index] = end is not None, len(answer)
    model.train(was_training)
    return {"predicted": texts, "stopped_at_eos": stopped, "new_tokens": new_tokens}


def load_adapter_model(path: Path, adapter_name: str = "default") -> torch.nn.Module:
    """The base model a LoRA run adapted (a causal LM, or an encoder-decoder for a seq2seq adapter), with the run's
    adapter on top (not merged) under `adapter_name`. Raises ModelError."""
    from peft import PeftConfig, PeftModel, TaskType
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = PeftConfig.from_pretrained(str(path))
    resolved = resolve_model(config.base_model_name_or_path)  # the folder it was trained from, or the id in the cache
    auto_class = AutoModelForSeq2SeqLM if config.task_type == TaskType.SEQ_2_SEQ_LM else AutoModelForCausalLM
    model = auto_class.from_pretrained(str(resolved.path), dtype=torch.float32)
    with quiet_peft_deprecation():
        return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name)


def pretrained_options(method: str) -> dict[str, Any]:
    """from_pretrained options for a training method: 4-bit base weights (qlora), the checkpoint's own dtype (lora on
    a GPU), else fp32."""
    if method == "qlora":
        return {"quantization_config": qlora_quantization()}
    if method == "lora" and torch.cuda.is_available():
        return {"dtype": "auto"}  # the base is frozen: keep the checkpoint's bf16/fp16 and half the memory
    return {"dtype": torch.float32}  # AdamW needs fp32 weights; bf16 speed comes from autocast


def adapt(model: torch.nn.Module, recipe: Recipe, task_type, default_targets: list[str] | str) -> torch.nn.Module:
    """LoRA adapters (after QLoRA's preparation of a 4-bit model) when train.method asks for them; else the model."""
    method = recipe.train.method
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        # QLoRA's recipe (Dettmers et al. 2023): norms in fp32, gradient checkpointing always on
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    if method in ("lora", "qlora"):
        model = apply_lora(model, recipe, task_type, default_targets=default_targets)
    return model


def save_generator(model: torch.nn.Module, tokenizer, path: Path) -> None:
    """Full weights, or a LoRA run's adapter alone (megabytes, not gigabytes): `slingshot export RUN --merge`
    writes merged weights when a folder without PEFT is wanted."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(str(path))  # adapter_config.json names the base model's folder
    else:
        model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def answer_metrics(outputs: dict[str, list]) -> dict[str, Any]:
    """EM, F1 and ROUGE-L of the answered rows, the share of answers that ended at EOS, their mean length, and the
    number of inputs cut at model.max_length."""
    answered = [i for i, gold in enumerate(outputs["gold"]) if gold]
    metrics = generation_metrics([outputs["predicted"][i] for i in answered], [outputs["gold"][i] for i in answered])
    count = max(len(outputs["predicted"]), 1)
    metrics["stopped_at_eos"] = sum(outputs["stopped_at_eos"]) / count
    metrics["mean_new_tokens"] = sum(outputs["new_tokens"]) / count
    metrics["truncated"] = sum(outputs["truncated"])
    return metrics


def answer_records(dataset: Dataset, outputs: dict[str, list]) -> list[dict]:
    """One predictions.jsonl line per conversation: row, prompt (last user turn), gold, predicted, stop."""
    rows = []
    for i, example in enumerate(dataset.to_list()):
        asked = prompt_messages(example["messages"])
        record: dict[str, Any] = {"row": example["row"],
                                  "prompt": next(m["content"] for m in reversed(asked) if m["role"] == "user")}
        if len(asked) > 1:
            record["context"] = asked[:-1]  # system prompt and earlier turns
        if outputs["gold"][i]:
            record["gold"] = outputs["gold"][i]
        record.update(predicted=outputs["predicted"][i], stopped_at_eos=outputs["stopped_at_eos"][i],
                      new_tokens=outputs["new_tokens"][i])
        if outputs["truncated"][i]:
            record["truncated"] = True  # longer than model.max_length: trained and prompted on a cut version
        rows.append(record)
    return rows


class GenerationTask:
    """Causal-LM fine-tuning with the loss on answer tokens only; answers generated and scored as text."""

    name = "generation"
    text_answers = True  # predictions are text: answer-similarity evaluation applies
    batch_columns = ("input_ids", "attention_mask", "labels", "position_ids")
    forward_columns = ("input_ids", "attention_mask")  # what `forward` reads of an evaluation row

    def __init__(self, settings: GenerationSection, seed: int = 0):
        self.settings = settings
        self.seed = seed

    # ------------------------------------------------------------------------------------------- data

    def prepare(self, splits: dict[str, Dataset], tokenizer, recipe: Recipe) -> dict[str, Dataset]:
        """Token ids, labels and the prompt of every conversation; train rows packed when generation.packing.

        Sets the tokenizer's chat template (generation.template) so that the saved model prompts the same way.
        A conversation longer than model.max_length loses its end; a prompt, its beginning (answers are written
        after it, so its end matters most).
        """
        tokenizer.chat_template = choose_template(tokenizer, self.settings.template)
        max_length = min(recipe.model.max_length, _model_max_length(tokenizer))

        def encode(example: dict) -> dict:
            messages = example["messages"]
            prompt = encode_prompt(tokenizer, prompt_messages(messages))
            reference = reference_answer(messages)
            if reference is not None:
                input_ids, labels = encode_conversation(tokenizer, messages)
            else:  # a prompt to answer: nothing to learn from, the prompt alone is the input
                input_ids, labels = prompt, [IGNORE] * len(prompt)
            return {"input_ids": input_ids[:max_length], "labels": labels[:max_length],
                    "length": min(len(input_ids), max_length), "prompt_ids": prompt[-max_length:],
                    "reference": reference or "", "truncated": len(input_ids) > max_length}

        encoded = {split: dataset.map(encode, remove_columns=dataset.column_names, keep_in_memory=True)
                   for split, dataset in splits.items()}
        if "train" in encoded:
            # a conversation cut before its answer teaches nothing; it would only cost time
            train = encoded["train"].filter(lambda row: any(label != IGNORE for label in row["labels"][1:]),
                                            keep_in_memory=True)
            encoded["train"] = self.pack(train, max_length) if self.settings.packing else train
        return encoded

    @staticmethod
    def pack(split: Dataset, max_length: int) -> Dataset:
        """Rows of several conversations, positions restarting at each; a conversation's first token has no label
        (the token before it belongs to another conversation)."""
        input_ids, labels = split["input_ids"], split["labels"]
        rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
        for members in pack_rows(split["length"], max_length):
            row_ids, row_labels, row_positions = [], [], []
            for index in members:
                row_ids += input_ids[index]
                row_labels += [IGNORE] + labels[index][1:]
                row_positions += list(range(len(input_ids[index])))
            rows["input_ids"].append(row_ids)
            rows["labels"].append(row_labels)
            rows["position_ids"].append(row_positions)
            rows["length"].append(len(row_ids))
        return Dataset.from_dict(rows)

    def collator(self, tokenizer) -> GenerationCollator:
        return GenerationCollator(tokenizer)

    # ------------------------------------------------------------------------------------------- model

    def build_model(self, resolved: ResolvedModel, recipe: Recipe, label_names: list[str] | None) -> torch.nn.Module:
        from peft import TaskType
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **pretrained_options(recipe.train.method))
        except (ValueError, OSError) as exc:
            raise ModelError(f"{resolved.name} cannot be used for generation: {str(exc).splitlines()[0][:200]}",
                             "choose a decoder (causal LM) such as GPT-2, Llama, Qwen2.5, SmolLM2 or Phi; for an "
                             "encoder-decoder (T5, BART) use task: seq2seq") from None
        return adapt(model, recipe, TaskType.CAUSAL_LM, LORA_TARGETS.get(model.config.model_type, "all-linear"))

    def load_model(self, path: Path) -> torch.nn.Module:
        """The run's model; a LoRA run's adapter is merged into its base in memory (plain forward speed)."""
        from transformers import AutoModelForCausalLM

        if (path / "adapter_config.json").is_file():
            return load_adapter_model(path).merge_and_unload().eval()
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    # ------------------------------------------------------------------------------------------- training

    @staticmethod
    def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "position_ids" in batch:
            # Packed rows: no attention mask, so Transformers derives the per-conversation mask from the positions.
            batch = {k: v for k, v in batch.items() if k != "attention_mask"}
        # use_cache=False: a cache would also switch off the packed-sequence mask
        return model(**batch, use_cache=False).logits  # (batch, seq, vocab)

    def fit_head(self, model, encoded, collate, recipe, device, amp_dtype) -> None:
        """Nothing to fit: the language-model head is trained by the loss."""

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-probability of each next token, (batch, seq, 1); the last position holds 0 (no next token)."""
        logits = self._logits(model, batch).float()
        next_tokens = batch["input_ids"][:, 1:, None]
        log_probabilities = logits[:, :-1].log_softmax(-1).gather(-1, next_tokens)  # (batch, seq - 1, 1)
        return F.pad(log_probabilities, (0, 0, 0, 1))

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Cross-entropy summed over answer tokens (the token at t+1 predicted at t), and their number."""
        labels = batch.pop("labels")
        logits = self._logits(model, batch)
        targets = labels[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                               reduction="sum")
        return loss, int((targets != IGNORE).sum())

    def loss_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    # ------------------------------------------------------------------------------------------- evaluation

    def generate(self, model: torch.nn.Module, encoded: Dataset, collate: GenerationCollator,
                 device: torch.device, autocast_dtype: torch.dtype | None) -> dict[str, list]:
        outputs = generate_answers(model, collate.tokenizer, encoded["prompt_ids"], self.settings, device=device,
                                   autocast_dtype=autocast_dtype, seed=self.seed)
        outputs["gold"] = [[r] if r else [] for r in encoded["reference"]]
        outputs["truncated"] = encoded["truncated"]
        return outputs

    def metrics(self, outputs: dict[str, list], encoded: Dataset, label_names: list[str] | None) -> dict[str, Any]:
        return answer_metrics(outputs)

    def eval_loss(self, logits: list[np.ndarray], encoded: Dataset) -> float:
        """Mean cross-entropy per answer token, as in training."""
        total, tokens = 0.0, 0
        for log_probabilities, labels in zip(logits, encoded["labels"]):
            trained = np.asarray(labels[1:]) != IGNORE
            total -= float(log_probabilities[:-1, 0][trained].sum())
            tokens += int(trained.sum())
        return total / tokens if tokens else 0.0

    def records(self, dataset: Dataset, outputs: dict[str, list], label_names: list[str] | None) -> list[dict]:
        return answer_records(dataset, outputs)

    # ------------------------------------------------------------------------------------------- saving

    def save(self, model: torch.nn.Module, tokenizer, path: Path, adapter_path: Path | None = None) -> None:
        """Full weights or the LoRA adapter alone (save_generator); the tokenizer carries the chat template."""
        save_generator(model, tokenizer, path)
