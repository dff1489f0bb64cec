"""Data checks behind `slingshot inspect`: what is in each split and what is wrong with it, with counts and examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from slingshot.data import LoadedData, load_data
from slingshot.models import load_tokenizer, resolve_model
from slingshot.recipe import Recipe


@dataclass
class Problem:
    """One finding: what, in which split, how many rows, one example, and whether training can go on."""

    check: str
    split: str
    count: int
    example: str
    severity: str  # "error" stops training, "warning" does not

    def line(self) -> str:
        return f"[{self.severity}] {self.split}: {self.check}: {self.count} (e.g. {self.example})"


@dataclass
class SplitReport:
    rows: int
    source: str
    labels: dict[str, int] | None = None
    label_stats: dict[str, float] | None = None  # regression: min/mean/max
    token_lengths: dict[str, int] = field(default_factory=dict)
    truncated: int = 0


@dataclass
class InspectReport:
    task: str
    model: str
    max_length: int
    splits: dict[str, SplitReport]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def length_percentiles(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {}
    values = np.asarray(lengths)
    return {"p50": int(np.percentile(values, 50)), "p90": int(np.percentile(values, 90)),
            "p95": int(np.percentile(values, 95)), "p99": int(np.percentile(values, 99)), "max": int(values.max())}


def inspect_data(recipe: Recipe, loaded: LoadedData | None = None, tokenizer=None) -> InspectReport:
    """Load the recipe's data without failing on data problems, and report them all."""
    loaded = loaded or load_data(recipe, strict=False)
    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model(recipe.model.name, recipe.model.revision).path)
    if recipe.task == "extractive_qa":
        return inspect_qa_data(recipe, loaded, tokenizer)
    if recipe.task in ("generation", "seq2seq"):
        return inspect_chat_data(recipe, loaded, tokenizer)
    names = loaded.label_names
    splits: dict[str, SplitReport] = {}
    problems: list[Problem] = []

    def key(example: dict) -> str:
        return example["text"] + ("\x00" + example["text_pair"] if "text_pair" in example else "")

    texts_by_split: dict[str, set[str]] = {}
    for split, dataset in loaded.splits.items():
        rows = dataset.to_list()
        report = SplitReport(rows=len(rows), source=loaded.sources[split])
        if names is not None:
            counts = Counter(names[r["label"]] if r["label"] >= 0 else "(unseen)" for r in rows)
            report.labels = {name: counts.get(name, 0) for name in names}
            if counts.get("(unseen)"):
                report.labels["(unseen)"] = counts["(unseen)"]
        elif rows:
            values = np.asarray([r["label"] for r in rows], dtype=float)
            report.label_stats = {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}
        lengths: list[int] = []
        if rows:  # a fast tokenizer fails on an empty batch
            encoded = tokenizer([r["text"] for r in rows], [r["text_pair"] for r in rows] if "text_pair" in rows[0]
                                else None, truncation=False, add_special_tokens=True)
            lengths = [len(ids) for ids in encoded["input_ids"]]
        report.token_lengths = length_percentiles(lengths)
        report.truncated = sum(length > recipe.model.max_length for length in lengths)
        splits[split] = report

        if not rows:
            problems.append(Problem("no rows", split, 0, loaded.sources[split], "error"))
        skipped = loaded.skipped.get(split)
        if skipped and skipped.count:
            problems.append(Problem("empty or whitespace texts (skipped)", split, skipped.count,
                                    ", ".join(skipped.examples), "warning"))
        if report.truncated:
            longest = rows[int(np.argmax(lengths))]
            problems.append(Problem(f"texts longer than model.max_length={recipe.model.max_length} tokens (truncated)",
                                    split, report.truncated, f"row {longest['row']}, {max(lengths)} tokens", "warning"))
        seen: dict[str, dict] = {}
        duplicates, conflicting = [], []
        for row in rows:
            k = key(row)
            if k in seen:
                duplicates.append(row)
                if seen[k]["label"] != row["label"]:
                    conflicting.append(row)
            else:
                seen[k] = row
        if duplicates:
            d = duplicates[0]
            problems.append(Problem("exact duplicate texts", split, len(duplicates),
                                    f"row {d['row']} repeats row {seen[key(d)]['row']}: {_short(d['text'])}", "warning"))
        if conflicting:
            c = conflicting[0]
            problems.append(Problem("duplicates with different labels", split, len(conflicting),
                                    f"row {c['row']} vs row {seen[key(c)]['row']}: {_short(c['text'])}", "warning"))
        texts_by_split[split] = set(seen)
        if split != "train" and names is not None:
            for label, count in loaded.unseen_eval_labels.get(split, {}).items():
                problems.append(Problem("label never seen in training", split, count, repr(label), "error"))
            missing = [n for n in names if report.labels and report.labels.get(n, 0) == 0]
            if missing and split == "eval":
                problems.append(Problem("classes with no evaluation rows", split, len(missing), ", ".join(missing),
                                        "warning"))

    if names is not None and "train" in splits:
        present = [n for n, c in (splits["train"].labels or {}).items() if c > 0 and n != "(unseen)"]
        if len(present) < 2:
            problems.append(Problem("single class in training data", "train", splits["train"].rows,
                                    repr(present[0] if present else "none"), "error"))
        counts = [c for n, c in (splits["train"].labels or {}).items() if n != "(unseen)"]
        if counts and min(counts) > 0 and max(counts) / min(counts) >= 10:
            problems.append(Problem("strong class imbalance (largest/smallest >= 10)", "train", max(counts),
                                    f"{max(counts)} vs {min(counts)} rows", "warning"))
    for split in ("eval", "test", "gold"):
        if split in texts_by_split:
            overlap = texts_by_split["train"] & texts_by_split[split]
            if overlap:
                problems.append(Problem("texts also in train (leakage)", split, len(overlap),
                                        _short(sorted(overlap)[0].replace("\x00", " | ")), "warning"))
    return InspectReport(recipe.task, recipe.model.name, recipe.model.max_length, splits, problems)


def _split_report(recipe: Recipe, loaded: LoadedData, split: str, rows: list[dict], lengths: list[int],
                  problems: list[Problem]) -> SplitReport:
    """Rows and token lengths of one split; its skipped examples, by reason, added to `problems` as warnings."""
    report = SplitReport(rows=len(rows), source=loaded.sources[split])
    report.token_lengths = length_percentiles(lengths)
    report.truncated = sum(length > recipe.model.max_length for length in lengths)
    skipped = loaded.skipped.get(split)
    for reason, count in (skipped.reasons.items() if skipped else []):
        problems.append(Problem(f"{reason} (skipped)", split, count, ", ".join(skipped.examples), "warning"))
    return report


def inspect_qa_data(recipe: Recipe, loaded: LoadedData, tokenizer) -> InspectReport:
    """Questions per split, question + context token lengths, skipped examples by reason, repeats and leakage.

    `truncated` counts questions whose context needs more than one window (nothing is lost: windows overlap).
    """
    splits: dict[str, SplitReport] = {}
    problems: list[Problem] = []
    contexts_by_split: dict[str, set[str]] = {}
    for split, dataset in loaded.splits.items():
        rows = dataset.to_list()
        encoded = tokenizer([r["question"] for r in rows], [r["context"] for r in rows], truncation=False)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        report = splits[split] = _split_report(recipe, loaded, split, rows, lengths, problems)
        if report.truncated:
            problems.append(Problem(f"question + context longer than model.max_length={recipe.model.max_length} "
                                    "tokens (split into overlapping windows)", split, report.truncated,
                                    f"{rows[int(np.argmax(lengths))]['row']}, {max(lengths)} tokens", "warning"))
        seen: dict[tuple[str, str], dict] = {}
        repeats = []
        for row in rows:
            key = (row["question"], row["context"])
            if key in seen:
                repeats.append(row)
            else:
                seen[key] = row
        if repeats:
            problems.append(Problem("same question on the same context", split, len(repeats),
                                    f"{repeats[0]['row']}: {_short(repeats[0]['question'])}", "warning"))
        contexts_by_split[split] = {row["context"] for row in rows}
    for split in ("eval", "test"):
        if split in contexts_by_split and "train" in contexts_by_split:
            overlap = contexts_by_split["train"] & contexts_by_split[split]
            if overlap:
                problems.append(Problem("contexts also in train (leakage)", split, len(overlap),
                                        _short(min(overlap)), "warning"))
    return InspectReport(recipe.task, recipe.model.name, recipe.model.max_length, splits, problems)


def inspect_chat_data(recipe: Recipe, loaded: LoadedData, tokenizer) -> InspectReport:
    """Conversations per split, their token lengths (in the chat template; for seq2seq, of the source), skipped rows
    by reason, repeated prompts, and prompts also in train (leakage). `truncated` counts conversations (seq2seq:
    sources) longer than model.max_length; seq2seq also counts answers longer than generation.max_new_tokens."""
    from slingshot.chat_data import prompt_messages, reference_answer, source_text
    from slingshot.chat_template import choose_template, encode_conversation

    seq2seq = recipe.task == "seq2seq"
    if not seq2seq:
        tokenizer.chat_template = choose_template(tokenizer, recipe.generation.template)
    splits: dict[str, SplitReport] = {}
    problems: list[Problem] = []
    prompts_by_split: dict[str, set[str]] = {}
    for split, dataset in loaded.splits.items():
        rows = dataset.to_list()
        if seq2seq:
            lengths = [len(ids) for ids in tokenizer([source_text(row["messages"]) for row in rows])["input_ids"]]
        else:
            lengths = [len(encode_conversation(tokenizer, row["messages"])[0]) for row in rows]
        report = splits[split] = _split_report(recipe, loaded, split, rows, lengths, problems)
        if report.truncated:
            what = ("sources longer than {} tokens (their end is cut)" if seq2seq else "conversations longer than {} "
                    "tokens (answers cut; those cut before their answer are not trained on)")
            problems.append(Problem(what.format(f"model.max_length={recipe.model.max_length}"), split,
                                    report.truncated, f"row {rows[int(np.argmax(lengths))]['row']}, {max(lengths)} "
                                    "tokens", "warning"))
        if seq2seq:
            answers = [reference_answer(row["messages"]) or "" for row in rows]
            targets = [len(ids) for ids in tokenizer(text_target=answers)["input_ids"]] if rows else []
            cut = [i for i, n in enumerate(targets) if n > recipe.generation.max_new_tokens]
            if cut:
                longest = max(cut, key=lambda i: targets[i])
                problems.append(Problem(f"answers longer than generation.max_new_tokens={recipe.generation.max_new_tokens} "
                                        "tokens (cut when training; the model cannot write them whole)", split,
                                        len(cut), f"row {rows[longest]['row']}, {targets[longest]} tokens", "warning"))
        seen: dict[str, dict] = {}
        repeats = []
        for row in rows:
            key = "\x00".join(m["content"] for m in prompt_messages(row["messages"]))
            if key in seen:
                repeats.append(row)
            else:
                seen[key] = row
        if repeats:
            problems.append(Problem("same prompt more than once", split, len(repeats),
                                    f"row {repeats[0]['row']}: {_short(prompt_messages(repeats[0]['messages'])[-1]['content'])}",
                                    "warning"))
        prompts_by_split[split] = set(seen)
    for split in ("eval", "test"):
        if split in prompts_by_split and "train" in prompts_by_split:
            overlap = prompts_by_split["train"] & prompts_by_split[split]
            if overlap:
                problems.append(Problem("prompts also in train (leakage)", split, len(overlap),
                                        _short(min(overlap).replace("\x00", " | ")), "warning"))
    return InspectReport(recipe.task, recipe.model.name, recipe.model.max_length, splits, problems)
