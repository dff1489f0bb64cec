"""The plain Hugging Face Trainer baselines that bench/throughput.py and bench/time_to_accuracy.py compare against.

"Tuned" is what a careful Trainer user does on a CPU: truncation at 128, dynamic padding, batch 32, lr 5e-5,
length-grouped batches. The "padded" blog recipe overrides a few of these settings in bench/throughput.py.
Not a benchmark itself.
"""

from __future__ import annotations

from typing import Callable

from common import model_dir


class CountingCollator:
    """Wraps a collator and counts real (mask = 1) and padded (mask numel) tokens of the batches it builds.

    `active` is switched on only around trainer.train(), so evaluation and predict batches are not counted.
    """

    def __init__(self, inner: Callable[[list[dict]], dict]):
        self.inner = inner
        self.active = False
        self.real_tokens = self.padded_tokens = self.examples = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.inner(features)
        if self.active:
            mask = batch["attention_mask"]
            self.real_tokens += int(mask.sum())
            self.padded_tokens += int(mask.numel())
            self.examples += int(mask.shape[0])
        return batch


def hf_dataset(tokenizer, sentences: list[str], labels: list[int], **tokenize_kwargs):
    """A tokenized datasets.Dataset with `labels`; the Trainer drops columns the model does not take."""
    from datasets import Dataset

    encoded = tokenizer(sentences, truncation=True, **tokenize_kwargs)
    return Dataset.from_dict({**encoded, "labels": labels})


def tuned_training_args(out_dir: str, seed: int, **overrides):
    """The "tuned" Trainer: batch 32, lr 5e-5, length-grouped batches, nothing written, no reporting, on the CPU."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=out_dir, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=5e-5,
        num_train_epochs=1, train_sampling_strategy="group_by_length",  # Transformers 5's name for group_by_length
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10**9, use_cpu=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, seed=seed,
    )
    # remove_unused_columns (default) drops all but model inputs and labels before the sampler is built, so
    # group_by_length measures lengths from `input_ids` (tokenizer.model_input_names[0]): no `length` column needed.
    # Note that it length-groups the *eval* sampler too: predictions come back in that order, with label_ids to match.
    return TrainingArguments(**{**settings, **overrides})


def hf_model(seed: int):
    """all-MiniLM-L6-v2 with a new 2-class head, seeded so the head starts the same in every run."""
    from transformers import AutoModelForSequenceClassification, set_seed
    from transformers.utils import logging as hf_logging

    set_seed(seed)
    hf_logging.set_verbosity_error()  # "newly initialized classifier" warning is expected
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir()), num_labels=2)
