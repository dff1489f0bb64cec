"""Question-answering data: SQuAD v1.1 JSON, or flat records (JSONL, Parquet, a hub dataset) of the same fields.

Every example becomes one flat row: id, title, question, context, answers (texts), answer_starts (character offsets
into the context), and row (where it came from: `data[3].paragraphs[0].qas[2]` or `line 12`).

A malformed file (wrong nesting, a field of the wrong type) is an error naming the path inside the JSON. An example
that is well-formed but unusable (empty context or question, no answer to learn from, an `answer_start` that does
not reproduce its answer text) is skipped and counted by reason, so one bad row never stops a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from slingshot.data import SPLITS, LoadedData, Skipped, _decode, data_sources, read_rows, sample
from slingshot.errors import DataError
from slingshot.recipe import Recipe

SQUAD_HINT = (
    'expected SQuAD v1.1: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", '
    '"answers": [{"text", "answer_start"}]}]}]}]}, or one {"question", "context", "answers"} object per JSONL line'
)
EMPTY_CONTEXT = "empty context"
EMPTY_QUESTION = "empty question"
NO_ANSWER = "no answer"
ANSWER_MISMATCH = "answer_start does not match the context"


# ---------------------------------------------------------------------------------------------------- reading


def _expect(value: Any, kind: type | tuple[type, ...], where: str, source: str) -> Any:
    """`value` when it has the JSON type `kind`, else a DataError naming its path inside the file."""
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer"}
    wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    if wrong:
        expected = " or ".join(names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
        got = "nothing" if value is None else type(value).__name__
        raise DataError(f"{source}: {where}: expected {expected}, got {got}", SQUAD_HINT)
    return value


def _field(record: dict, key: str, kind, where: str, source: str) -> Any:
    if key not in record:
        raise DataError(f"{source}: {where}: missing '{key}' (keys found: {', '.join(record) or 'none'})", SQUAD_HINT)
    return _expect(record[key], kind, f"{where}.{key}", source)


def _answers(value: Any, where: str, source: str) -> tuple[list[str], list[int]]:
    """Answer texts and starts from SQuAD's list of {text, answer_start} or the hub's {text: [...], answer_start: [...]}."""
    if value is None:
        return [], []
    if isinstance(value, dict):  # the Hugging Face `squad` dataset's columnar form
        texts = _field(value, "text", list, where, source)
        starts = _field(value, "answer_start", list, where, source)
        if len(texts) != len(starts):
            raise DataError(f"{source}: {where}: {len(texts)} texts but {len(starts)} answer_start values", SQUAD_HINT)
        return ([_expect(t, str, f"{where}.text[{i}]", source) for i, t in enumerate(texts)],
                [_expect(s, int, f"{where}.answer_start[{i}]", source) for i, s in enumerate(starts)])
    items = _expect(value, list, where, source)
    texts, starts = [], []
    for i, item in enumerate(items):
        _expect(item, dict, f"{where}[{i}]", source)
        texts.append(_field(item, "text", str, f"{where}[{i}]", source))
        starts.append(_field(item, "answer_start", int, f"{where}[{i}]", source))
    return texts, starts


def _example(record: dict, where: str, source: str, title: str = "") -> dict[str, Any]:
    texts, starts = _answers(record.get("answers"), f"{where}.answers", source)
    return {
        "id": str(record.get("id", where)),
        "title": str(record.get("title", title) or ""),
        "question": _field(record, "question", str, where, source),
        "context": _field(record, "context", str, where, source),
        "answers": texts,
        "answer_starts": starts,
        "row": where,
    }


def _squad_examples(content: dict, source: str) -> list[dict[str, Any]]:
    examples = []
    for a, article in enumerate(_field(content, "data", list, "(top level)", source)):
        where = f"data[{a}]"
        _expect(article, dict, where, source)
        title = article.get("title", "")
        for p, paragraph in enumerate(_field(article, "paragraphs", list, where, source)):
            where_p = f"{where}.paragraphs[{p}]"
            _expect(paragraph, dict, where_p, source)
            context = _field(paragraph, "context", str, where_p, source)
            for q, qa in enumerate(_field(paragraph, "qas", list, where_p, source)):
                where_q = f"{where_p}.qas[{q}]"
                _expect(qa, dict, where_q, source)
                examples.append(_example({**qa, "context": context}, where_q, source, title=str(title or "")))
    return examples


def read_qa_examples(source: str, *, config: str | None = None, split: str | None = None) -> tuple[list[dict], str]:
    """Flat QA examples of one file or hub split, and the name to report it by. Raises DataError when malformed."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        try:
            content = json.loads(_decode(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})", "fix the JSON syntax") from None
        if isinstance(content, dict) and isinstance(content.get("data"), list) and any(
            isinstance(article, dict) and "paragraphs" in article for article in content["data"]
        ):
            return _squad_examples(content, str(path)), str(path)
        if isinstance(content, dict) and "data" in content and not isinstance(content["data"], list):
            _field(content, "data", list, "(top level)", str(path))
        records = content.get("data") if isinstance(content, dict) else content
        _expect(records, list, "(top level)", str(path))
        return [_example(_expect(r, dict, f"[{i}]", str(path)), f"[{i}]", str(path)) for i, r in enumerate(records)], str(path)
    rows = read_rows(source, config=config, split=split)
    missing = [c for c in ("question", "context") if c not in rows.columns]
    if missing:
        raise DataError(f"{rows.source}: column {', '.join(repr(m) for m in missing)} not found; columns found: "
                        f"{', '.join(rows.columns) or '(none)'}", SQUAD_HINT)
    return [_example(record, f"line {line}", rows.source) for record, line in zip(rows.records, rows.lines)], rows.source


def usable_examples(examples: list[dict], source: str, *, need_answers: bool) -> tuple[list[dict], Skipped]:
    """The examples a model can learn from or be scored on; the others are counted by reason (see module doc)."""
    kept, skipped = [], Skipped()
    for example in examples:
        context = example["context"]
        reason = None
        if not context.strip():
            reason = EMPTY_CONTEXT
        elif not example["question"].strip():
            reason = EMPTY_QUESTION
        elif need_answers and not example["answers"]:
            reason = NO_ANSWER
        elif any(context[start:start + len(text)] != text or not text.strip()
                 for text, start in zip(example["answers"], example["answer_starts"])):
            reason = ANSWER_MISMATCH
        if reason is None:
            kept.append(example)
        else:
            skipped.add(reason, f"{source} {example['row']}")
    return kept, skipped


# ---------------------------------------------------------------------------------------------------- splits


def group_split(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole documents (title, else context): questions on one passage in both splits would leak answers."""
    groups = sorted({e["title"] or e["context"] for e in examples})
    rng = np.random.default_rng(seed)
    count = min(max(round(len(groups) * fraction), 1), max(len(groups) - 1, 1))
    held = {groups[i] for i in rng.permutation(len(groups))[:count]}
    return ([e for e in examples if (e["title"] or e["context"]) not in held],
            [e for e in examples if (e["title"] or e["context"]) in held])


def to_dataset(examples: list[dict]) -> Dataset:
    from datasets import Features, Sequence, Value

    # Explicit types: a file whose questions all lack answers would otherwise give list<null> columns.
    features = Features({"id": Value("string"), "title": Value("string"), "question": Value("string"),
                         "context": Value("string"), "answers": Sequence(Value("string")),
                         "answer_starts": Sequence(Value("int64")), "row": Value("string")})
    return Dataset.from_list(examples, features=features)


def load_qa_data(recipe: Recipe, *, splits: tuple[str, ...] = SPLITS) -> LoadedData:
    """Every split the recipe names as QA examples; eval held out by document when no eval file is given."""
    sources = data_sources(recipe)
    raw: dict[str, list[dict]] = {}
    skipped: dict[str, Skipped] = {}
    shown: dict[str, str] = {}
    for split in SPLITS:
        if split not in sources or (split != "train" and split not in splits):
            continue
        source = sources[split]
        hub_eval = source.endswith("#eval")
        try:
            examples, shown[split] = read_qa_examples(source.removesuffix("#eval"), config=recipe.data.dataset_config,
                                                      split=split)
        except DataError:
            if hub_eval:
                continue  # a hub dataset without an eval split: hold one out of train below
            raise
        raw[split], skipped[split] = usable_examples(examples, shown[split], need_answers=True)
        if not raw[split]:
            reasons = ", ".join(f"{count} {reason}" for reason, count in skipped[split].reasons.items())
            raise DataError(f"{shown[split]}: no usable questions ({reasons or 'the file is empty'})",
                            "check the file holds SQuAD-style questions with answers")
    if "eval" not in raw:
        raw["train"], raw["eval"] = group_split(raw["train"], recipe.data.eval_fraction, recipe.data.seed)
        shown["eval"] = f"{shown['train']} (held out {recipe.data.eval_fraction:.0%} of documents, seed {recipe.data.seed})"
        skipped["eval"] = Skipped()
        if not raw["train"] or not raw["eval"]:
            raise DataError(f"{shown['train']}: one document only, so no eval split can be held out", "set data.eval")
    limits = {"train": recipe.data.limit.train, "eval": recipe.data.limit.eval, "test": recipe.data.limit.test}
    datasets = {split: to_dataset(sample(examples, limits[split], recipe.data.seed))
                for split, examples in raw.items() if split in splits}
    return LoadedData(datasets, None, shown, skipped)


def load_qa_file(path: str, *, need_answers: bool | None) -> tuple[Dataset, Skipped]:
    """One file scored (need_answers=True) or answered (None: answers kept as gold when present) by a finished run."""
    records, source = read_qa_examples(path)
    return load_qa_examples(records, source, need_answers=need_answers)


def load_qa_examples(records: list[dict], source: str, *, need_answers: bool | None) -> tuple[Dataset, Skipped]:
    """Flat {question, context, answers?} records (e.g. from the command line) as a dataset a run can answer."""
    examples = [r if "row" in r else _example(r, f"[{i}]", source) for i, r in enumerate(records)]
    kept, skipped = usable_examples(examples, source, need_answers=bool(need_answers))
    if not kept:
        raise DataError(f"{source}: no usable questions ({', '.join(f'{n} {r}' for r, n in skipped.reasons.items())})",
                        "each question needs a non-empty context" + (" and an answer" if need_answers else ""))
    return to_dataset(kept), skipped
